"""Kept weights (relulab.weights): a sweep keeps each run's final and best-epoch weights beside its store, and
probes, searches and export-model read them instead of training again; where a retrain cannot be avoided, the
retrained model is stored as a record of its own, never under the stored run's key."""
import json
import math
import sqlite3

import pytest
import torch

from relulab.training import checkpoints
from relulab.packing import pack
from relulab.probes import statistics as probes
from relulab.training import loop as train
from relulab.store import weights
from relulab.data import load_data
from relulab.core.errors import UserError
from relulab.experiments import Overrides, load_experiment, run_experiment
from relulab.search import SearchOptions, probe_configuration, run_search
from relulab.store import RETRAINED_FOR_PROBING, Finished, Store, retrained_key
from specs import quiet, relulab, write_spec
from specs import store_rows as rows

# Three epochs of SGD on 240 synthetic images: the seeds differ in where their best epoch falls, so some runs
# keep a best-epoch file beside their final one. Two seeds of each configuration train packed.
SPEC = """\
name: kept
device: cpu
threads: 1
seeds: [0, 1]
data: {name: synthetic, options: {n: 240, classes: 3, size: 4}}
model: {name: deep-mlp, widths: [8, 8], init: he_normal}
train: {epochs: 3, batch_size: 32, optimizer: {name: sgd, lr: 0.05}}
configs:
  relu: {}
  tanh: {model: {activation: tanh}}
baseline: relu
"""


def experiment(tmp_path, text=SPEC, store="s.sqlite", **overrides):
    return load_experiment(str(write_spec(tmp_path, text)), Overrides(store=str(tmp_path / store), **overrides))


def swept(tmp_path, text=SPEC, **overrides):
    exp = experiment(tmp_path, text, **overrides)
    run_experiment(exp, log=quiet)
    return exp


def evaluated(capsys, path) -> float:
    code, out, err = relulab(capsys, "evaluate", str(path), "--json")
    assert code == 0, err
    return json.loads(out)["results"][0]["accuracy"]


def test_a_sweep_keeps_weights_that_evaluate_to_the_runs_accuracies(tmp_path, capsys):
    code, _, err = relulab(capsys, "run", str(write_spec(tmp_path, SPEC)), "--store", str(tmp_path / "s.sqlite"),
                           "--no-report")
    assert code == 0, err
    runs = {r["key"]: r for r in rows(tmp_path / "s.sqlite", "SELECT * FROM runs")}
    kept = rows(tmp_path / "s.sqlite", "SELECT * FROM run_weights")
    assert {r["run_key"] for r in kept if r["kind"] == "final"} == set(runs) and len(runs) == 4
    bests = [r for r in kept if r["kind"] == "best"]
    assert bests, "the spec is meant to give some run a best epoch before its last"
    for r in kept:
        run, path = runs[r["run_key"]], tmp_path / "s.weights" / r["file"]
        assert r["file"] == f"{r['run_key']}{'.best' if r['kind'] == 'best' else ''}.pt"
        assert path.stat().st_size == r["bytes"]
        payload = torch.load(path, map_location="cpu", weights_only=True)  # plain PyTorch reads them
        assert payload["weights"] == r["kind"] and payload["epoch"] == r["epoch"]
        if r["kind"] == "final":
            assert r["epoch"] == run["epochs"] and evaluated(capsys, path) == run["final_val_acc"]
        else:
            assert r["epoch"] == run["best_epoch"] < run["epochs"] and evaluated(capsys, path) == run["best_val_acc"]
    # a run whose best epoch is its last keeps one file: its final model is its best
    assert all(runs[k]["best_epoch"] == runs[k]["epochs"] for k in set(runs) - {r["run_key"] for r in bests})
    assert not list((tmp_path / "s.weights").glob(".*"))  # no staged file left behind


def test_keep_weights_false_and_auto_past_its_size_keep_none(tmp_path, monkeypatch, capsys):
    code, _, err = relulab(capsys, "run", str(write_spec(tmp_path, SPEC)), "--store", str(tmp_path / "n.sqlite"),
                           "--no-report", "--no-keep-weights")
    assert code == 0, err
    assert not (tmp_path / "n.weights").exists()
    tables = rows(tmp_path / "n.sqlite", "SELECT name FROM sqlite_master WHERE type = 'table'")
    assert "run_weights" not in {t["name"] for t in tables}
    with pytest.raises(UserError, match=r"n.sqlite: keeps no weights of relu seed 0 \(run \w+\): runs keep their "
                                         "weights when trained with keep_weights on"):
        weights.export_run(tmp_path / "n.sqlite", tmp_path / "m.pt", "relu", 0)
    assert not (tmp_path / "m.pt").exists()
    monkeypatch.setattr(weights, "AUTO_LIMIT_BYTES", 100)  # auto: a run's weights must take at most this
    lines = []
    run_experiment(experiment(tmp_path, store="a.sqlite"), log=lines.append)
    said = [line for line in lines if "more than keep_weights: auto keeps" in line]
    assert len(said) == 1 and not list((tmp_path / "a.weights").glob("*.pt"))  # said once, for four runs
    run_experiment(experiment(tmp_path, SPEC + "keep_weights: true\n", store="t.sqlite"), log=quiet)
    assert len(list((tmp_path / "t.weights").glob("*.pt"))) >= 4  # true keeps them whatever their size


def test_a_bad_keep_weights_is_one_line_naming_the_field(tmp_path):
    with pytest.raises(UserError, match=r"^keep_weights: expected auto .*, true or false, got 'maybe'$"):
        experiment(tmp_path, SPEC + "keep_weights: maybe\n")


def test_probe_after_run_trains_nothing_and_measures_the_kept_weights(tmp_path, capsys, monkeypatch):
    exp = swept(tmp_path)
    monkeypatch.setattr(train, "run", _refuse)
    monkeypatch.setattr(pack, "train_together", _refuse)
    code, out, err = relulab(capsys, "probe", str(tmp_path / "spec.yaml"), "--store", str(tmp_path / "s.sqlite"),
                             "--config", "tanh", "--seed", "1", "--no-report")
    assert code == 0, err
    key = _key(exp, "tanh", 1)
    assert f"probed the kept weights of run {key}" in err
    stored = load_probes(tmp_path / "s.sqlite", key)
    ckpt = checkpoints.load(tmp_path / "s.weights" / f"{key}.pt")
    splits = load_data(ckpt.spec.data)
    x, y = probes.select_probe_set(splits, probes.parse_probe_set("first"))
    direct = probes.measure(ckpt.model, x, y, probes.stat_names(), classes=splits.classes)
    expected = {(stat, slot, cls): value for stat, slot, cls, _, value in direct.rows()}
    assert set(stored) == set(expected)
    for k, value in expected.items():
        assert stored[k] == value or (math.isnan(stored[k]) and math.isnan(value)), k
    assert rows(tmp_path / "s.sqlite", "SELECT count(*) AS n FROM runs")[0]["n"] == 4  # no copy was made


def _refuse(*args, **kwargs):
    raise AssertionError("a run was trained")


def _key(exp, variant, seed):
    return next(p.key for p in exp.planned() if p.variant.name == variant and p.seed == seed)


def load_probes(store, key, probe_set="first"):
    with Store(store, create=False) as s:
        return {(r["stat"], r["slot"], r["class"]): r["value"] for r in s.run_probes([key], probe_set)}


def test_without_weights_probe_stores_a_retrained_record_of_its_own(tmp_path, capsys, monkeypatch):
    """The defect: `relulab probe` retrained a packed run alone and stored the copy's statistics under the packed
    run's key. Now the copy is a record of its own, with its own accuracy; the stored run is left as it was."""
    exp = swept(tmp_path, SPEC + "keep_weights: false\n")
    key = _key(exp, "relu", 0)
    before = rows(tmp_path / "s.sqlite", "SELECT * FROM runs WHERE key = ?", (key,))
    code, out, err = relulab(capsys, "probe", str(tmp_path / "spec.yaml"), "--store", str(tmp_path / "s.sqlite"),
                             "--config", "relu", "--seed", "0", "--no-report")
    assert code == 0, err
    copy_key = retrained_key(key)
    (copy,) = rows(tmp_path / "s.sqlite", "SELECT * FROM runs WHERE key = ?", (copy_key,))
    assert json.loads(copy["data_json"])[RETRAINED_FOR_PROBING] == key
    assert (copy["variant"], copy["seed"]) == ("relu", 0)
    assert f"statistics of a copy of run {key} retrained for probing (run {copy_key}" in err
    assert f"the copy's best val acc {copy['best_val_acc'] * 100:.2f}%, the stored run's " \
           f"{before[0]['best_val_acc'] * 100:.2f}%" in err
    assert rows(tmp_path / "s.sqlite", "SELECT * FROM runs WHERE key = ?", (key,)) == before
    assert load_probes(tmp_path / "s.sqlite", key) == {} and load_probes(tmp_path / "s.sqlite", copy_key)
    # a second probe finds the copy's statistics: nothing is trained again
    monkeypatch.setattr(train, "run", _refuse)
    monkeypatch.setattr(pack, "train_together", _refuse)
    again = probe_configuration(exp, seed=0, config="relu", log=quiet)
    assert (again.source, again.probed_key, again.copy["key"]) == ("store", copy_key, copy_key)
    # the report shows both accuracies
    from relulab.report import build_report

    md = build_report(tmp_path / "s.sqlite").markdown.read_text()
    assert "### Retrained for probing" in md and copy_key in md
    assert f"| relu | 0 | {before[0]['best_val_acc'] * 100:.2f} | {copy['best_val_acc'] * 100:.2f} |" in md


def test_probes_at_several_epochs_train_a_copy_even_where_weights_are_kept(tmp_path):
    exp = swept(tmp_path)
    key = _key(exp, "tanh", 0)
    pr = probe_configuration(exp, seed=0, config="tanh", epochs="all", log=quiet)
    assert (pr.source, pr.probed_key) == ("retrained", retrained_key(key)) and sorted(pr.results) == [1, 2, 3]
    assert load_probes(tmp_path / "s.sqlite", key) == {}  # the stored run's key holds no copy's statistics


def test_a_search_probes_kept_weights_and_otherwise_stores_copies(tmp_path):
    lines = []
    kept = run_search(swept(tmp_path), SearchOptions("oracle", budget=1), log=lines.append)
    assert kept.probed_again == 0 and any("probed their kept weights" in line for line in lines)
    assert not rows(tmp_path / "s.sqlite", "SELECT key FROM runs WHERE key LIKE '%-retrained'")
    exp = swept(tmp_path, SPEC + "keep_weights: false\n", store="n.sqlite")
    base = [_key(exp, "relu", s) for s in (0, 1)]
    before = rows(tmp_path / "n.sqlite", "SELECT * FROM runs ORDER BY key")
    outcome = run_search(exp, SearchOptions("oracle", budget=1), log=quiet)
    assert outcome.probed_again == 2  # the base model's two seeds: no weights, so copies
    copies = rows(tmp_path / "n.sqlite", "SELECT * FROM runs WHERE key LIKE '%-retrained'")
    assert sorted(c["key"] for c in copies) == sorted(retrained_key(k) for k in base)
    assert all(json.loads(c["data_json"])[RETRAINED_FOR_PROBING] in base for c in copies)
    after = {r["key"]: r for r in rows(tmp_path / "n.sqlite", "SELECT * FROM runs")}
    assert all(after[r["key"]] == r for r in before)  # the stored runs are untouched
    assert all(load_probes(tmp_path / "n.sqlite", k) == {} for k in base)
    with Store(tmp_path / "n.sqlite", create=False) as store:
        (s,) = store.searches()
        assert {c.stat for c in s.correlations} >= {"ratio_num"}  # judged on the copies' statistics
    again = run_search(exp, SearchOptions("oracle", budget=1), log=quiet)
    assert again.probed_again == 0 and again.trained == 0  # the copies' statistics are found


@pytest.mark.parametrize("damage", ["altered", "truncated", "missing"])
def test_a_weights_file_that_is_not_the_one_written_is_not_used(tmp_path, damage):
    exp = swept(tmp_path)
    key = _key(exp, "relu", 1)
    path = tmp_path / "s.weights" / f"{key}.pt"
    blob = bytearray(path.read_bytes())
    if damage == "altered":
        blob[-100] ^= 0xFF  # same size, other bytes
        path.write_bytes(bytes(blob))
    elif damage == "truncated":
        path.write_bytes(bytes(blob[:-10]))
    else:
        path.unlink()
    lines = []
    with Store(tmp_path / "s.sqlite") as store:
        kept = weights.KeptWeights(store, lines.append)
        assert kept.checkpoint(key) is None and kept.checkpoint(key) is None
    assert len(lines) == 1 and f"the kept weights of run {key} are not used" in lines[0]
    assert {"altered": "sha256 differs", "truncated": "bytes, not the", "missing": "missing"}[damage] in lines[0]
    pr = probe_configuration(exp, seed=1, config="relu", log=quiet)  # not used: a copy is trained instead
    assert (pr.source, pr.probed_key) == ("retrained", retrained_key(key))


def test_a_store_row_naming_a_file_elsewhere_is_not_followed(tmp_path):
    exp = swept(tmp_path)
    key = _key(exp, "relu", 0)
    db = sqlite3.connect(tmp_path / "s.sqlite")
    db.execute("UPDATE run_weights SET file = '../s.sqlite' WHERE run_key = ?", (key,))
    db.commit()
    db.close()
    lines = []
    with Store(tmp_path / "s.sqlite") as store:
        assert weights.KeptWeights(store, lines.append).checkpoint(key) is None
    assert "not a file name" in lines[0]


def test_files_take_their_names_only_with_the_row_and_a_second_writer_is_dropped(tmp_path):
    exp = swept(tmp_path)
    key = _key(exp, "relu", 0)
    path = tmp_path / "s.weights" / f"{key}.pt"
    first = path.read_bytes()
    spec = exp.parts[0].variants[0].spec
    splits = load_data(spec.data)
    result = train.run(spec, seed=5, device="cpu", splits=splits)  # another model, to be stored under `key`
    keeper = weights.Keeper(exp.store, True, {}, quiet)
    staged = keeper.stage(key, result, result.model.state_dict())
    expected = 1 + (result.best_state is not None)  # the final weights, and the best epoch's where it is another
    assert path.read_bytes() == first and len(list(path.parent.glob(".*.staged"))) == expected  # not in place yet
    with Store(exp.store) as store:
        assert not store.record(Finished(key, exp.name, "kept", "relu", result, {}, staged))
    assert path.read_bytes() == first and not list(path.parent.glob(".*"))  # the first writer's file is kept


def test_export_model_writes_the_runs_checkpoint(tmp_path, capsys):
    swept(tmp_path)
    runs = {r["key"]: r for r in rows(tmp_path / "s.sqlite", "SELECT * FROM runs")}
    best = {r["run_key"] for r in rows(tmp_path / "s.sqlite", "SELECT * FROM run_weights WHERE kind = 'best'")}
    key = sorted(best)[0]
    variant, seed = runs[key]["variant"], runs[key]["seed"]
    out = tmp_path / "out" / "model.pt"
    code, stdout, err = relulab(capsys, "export-model", str(tmp_path / "s.sqlite"), "--config", variant, "--seed",
                                str(seed), "-o", str(out))
    assert code == 0, err
    assert stdout.strip() == str(out)
    assert out.read_bytes() == (tmp_path / "s.weights" / f"{key}.pt").read_bytes()
    assert evaluated(capsys, out) == runs[key]["final_val_acc"]
    ckpt = checkpoints.load(out)  # plain PyTorch and relulab's loader read it
    assert torch.load(out, weights_only=True)["seed"] == ckpt.seed == seed and ckpt.weights == "final"
    done = weights.export_run(tmp_path / "s.sqlite", tmp_path / "best.pt", variant, seed, best=True)
    assert done.weights == "best" and done.epoch == runs[key]["best_epoch"]
    assert evaluated(capsys, tmp_path / "best.pt") == runs[key]["best_val_acc"]
    last_is_best = next(k for k in runs if k not in best)
    with pytest.raises(UserError, match="export.best: the best epoch of .* is its last .* its final weights are the best"):
        weights.export_run(tmp_path / "s.sqlite", tmp_path / "x.pt", runs[last_is_best]["variant"],
                           runs[last_is_best]["seed"], best=True)
    assert not (tmp_path / "x.pt").exists()


def test_export_model_finds_a_searchs_placement(tmp_path):
    exp = experiment(tmp_path)
    run_search(exp, SearchOptions("exhaustive", k=1), log=quiet)
    done = weights.export_run(exp.store, tmp_path / "off.pt", "off-2", 1)
    assert done.variant == "off-2" and checkpoints.load(tmp_path / "off.pt").spec.model.slots == {2: "identity"}


def test_export_errors_name_fields_in_python_and_options_on_the_command_line(tmp_path, capsys):
    """The library names what was wrong by field (export.config, export.seed); relulab export-model shows the
    options that set them (--config, --seeds)."""
    swept(tmp_path)
    with pytest.raises(UserError, match=r"^export\.config: unknown value 'nope'"):
        weights.export_run(tmp_path / "s.sqlite", tmp_path / "x.pt", "nope", 0)
    with pytest.raises(UserError, match=r"^export\.seed: relu seed 7 is not in the store"):
        weights.export_run(tmp_path / "s.sqlite", tmp_path / "x.pt", "relu", 7)
    code, _, err = relulab(capsys, "export-model", str(tmp_path / "s.sqlite"), "--config", "nope", "--seed", "0",
                           "-o", str(tmp_path / "x.pt"))
    assert code == 2 and err.startswith("error: --config: unknown value 'nope'"), err
    code, _, err = relulab(capsys, "export-model", str(tmp_path / "s.sqlite"), "--config", "relu", "--seed", "7",
                           "-o", str(tmp_path / "x.pt"))
    assert code == 2 and err.startswith("error: --seeds: relu seed 7 is not in the store"), err
    assert not (tmp_path / "x.pt").exists()
