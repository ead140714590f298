"""Experiment specs: reading, validation with field-named errors, expansion, and the sweep driver."""
import math
import re
import sqlite3

import pytest

from relulab.core.errors import UserError
from relulab.experiments import (Overrides, load_experiment, parse_seeds, parse_yaml, preset_names, run_experiment,
                                 run_key)
from relulab.zoo.models import ModelSpec
from relulab.training.specs import RunSpec
from specs import TINY, quiet, relulab, write_spec




# ---------------------------------------------------------------- presets


def test_every_preset_parses_and_expands():
    assert set(preset_names()) >= {"greedy-relu-cifar10", "why-relu-fmnist", "selu-vs-batchnorm", "relu-explained",
                                   "quickstart"}
    for name in preset_names():
        exp = load_experiment(name)
        assert exp.planned() and all(p.description for p in exp.parts)


def test_why_relu_fmnist_preset_is_the_authors_protocol():
    exp = load_experiment("why-relu-fmnist")
    (part,) = exp.parts
    assert part.seeds == [0, 1, 2, 3, 4] and part.baseline == "relu-he"
    by_name = {v.name: v.spec for v in part.variants}
    assert list(by_name) == ["relu-glorot", "relu-he", "sigmoid-glorot", "tanh-glorot"]
    for name, spec in by_name.items():
        assert (spec.data.name, spec.data.split, spec.model.name) == ("fashion-mnist", "first:5000", "deep-mlp")
        assert (spec.train.epochs, spec.train.batch_size, spec.train.optimizer.name) == (10, 32, "sgd")
        assert spec.model.widths is None  # the source's 300 + 49 x 100
    assert by_name["relu-glorot"].train.optimizer.lr == 0.01
    assert by_name["relu-he"].model.init == "he_normal" and by_name["relu-he"].train.optimizer.lr == 0.001


def test_greedy_relu_cifar10_and_selu_vs_batchnorm_presets():
    greedy = {v.name: v.spec for v in load_experiment("greedy-relu-cifar10").parts[0].variants}
    assert greedy["off-7-10"].model.slots == {7: "identity", 10: "identity"}
    assert greedy["no-activation"].model.activation == "identity"
    assert greedy["all-relu"].train.optimizer.flavour == "keras" and greedy["all-relu"].data.split == "test"
    assert {s.data.name for s in greedy.values()} == {"cifar10"}
    selu = {v.name: v.spec for v in load_experiment("selu-vs-batchnorm", Overrides(sets=["data.name=fashion-mnist"]))
            .parts[0].variants}
    assert selu["relu-no-bn"].model.batchnorm is False and selu["selu-bn-lecun"].model.init == "lecun_uniform"
    assert all(s.data.name == "fashion-mnist" for s in selu.values())


def test_quickstart_has_a_part_per_source_with_several_seeds():
    exp = load_experiment("quickstart")
    assert [p.name for p in exp.parts] == ["greedy-relu-cifar10", "why-relu-fmnist", "selu-vs-batchnorm",
                                           "relu-explained"]
    assert exp.device == "cpu" and all(len(p.seeds) >= 2 for p in exp.parts)
    assert all(v.spec.data.name == "digits" for p in exp.parts for v in p.variants)
    explained = exp.parts[-1]
    assert explained.probes == ["sparsity"] and set(explained.analyses) == {"relu_demo", "activation_plots",
                                                                            "activation_cost"}


# ---------------------------------------------------------------- expansion


GRID = TINY + """\
grid:
  train.optimizer.lr: [0.1, 0.01]
  train.batch_size: [16, 32]
"""


def test_configs_times_grid_times_seeds(tmp_path):
    exp = load_experiment(str(write_spec(tmp_path, GRID)))
    (part,) = exp.parts
    names = [v.name for v in part.variants]
    assert len(names) == 8 and names[0] == "relu[lr=0.1,batch_size=16]"
    assert len(exp.planned()) == 16 and len({p.key for p in exp.planned()}) == 16
    tanh = next(v for v in part.variants if v.name == "tanh[lr=0.01,batch_size=32]")
    assert tanh.spec.train.optimizer.lr == 0.01 and tanh.spec.train.batch_size == 32
    assert tanh.spec.model.activation == "tanh"
    assert part.baseline_of(tanh).name == "relu[lr=0.01,batch_size=32]"  # the baseline at the same grid point
    assert part.baseline_of(part.variants[0]) is None


def test_command_line_overrides_win(tmp_path):
    spec = write_spec(tmp_path)
    exp = load_experiment(str(spec), Overrides(seeds=[3, 4, 5], epochs=1, sets=["model.widths=[4]",
                                                                                "configs.tanh.model.init=zeros"]))
    (part,) = exp.parts
    assert part.seeds == [3, 4, 5]
    assert all(v.spec.train.epochs == 1 and v.spec.model.widths == [4] for v in part.variants)
    assert part.variants[1].spec.model.init == "zeros"


def test_run_key_is_the_resolved_config_plus_seed():
    a = RunSpec(model=ModelSpec(activation="ReLU", slots={2: "none"}))
    b = RunSpec(model=ModelSpec(activation="relu", slots={2: "identity"}))
    assert run_key(a, 0) == run_key(b, 0) != run_key(b, 1)
    b.data.download = False  # where files come from is not part of a run's identity
    assert run_key(a, 0) == run_key(b, 0)
    b.train.optimizer.lr = b.train.optimizer.resolved_lr()  # the default, written out
    assert run_key(a, 0) == run_key(b, 0)
    b.train.epochs += 1
    assert run_key(a, 0) != run_key(b, 0)


def test_yaml_12_booleans_and_numbers():
    # YAML 1.1 would read `off` as false and 1e-3 as text.
    assert parse_yaml("off: [7]\nlr: 1e-3\nact: off\nbn: true\nn: 10", "x") == {
        "off": [7], "lr": 0.001, "act": "off", "bn": True, "n": 10}


@pytest.mark.parametrize("text,value", [
    ("010", 10), ("-7", -7), ("+3", 3), ("0o17", 15), ("0x1F", 31),  # YAML 1.2 integers (1.1 read 010 as 8)
    ("1:30", "1:30"), ("0b101", "0b101"), ("1_000", "1_000"), ("0o9", "0o9"),  # 1.1 integers, text in 1.2
    ("2024-01-01", "2024-01-01"), ("=", "="),  # no timestamps, no value key
    ("null", None), ("~", None), ("", None), ("1e-3", 0.001), ("10.", 10.0), ("off", "off"), ("false", False),
])
def test_yaml_12_core_schema(text, value):
    parsed = parse_yaml(f"v: {text}", "x")["v"]
    assert parsed == value and type(parsed) is type(value)


def test_merge_keys_and_shared_anchors():
    raw = parse_yaml("base: &base {a: 1, b: 2}\nfirst: {<<: *base, b: 3}\nsecond: *base\nthird: *base", "x")
    assert raw["first"] == {"a": 1, "b": 3} and raw["second"] == raw["third"] == {"a": 1, "b": 2}
    assert raw["second"] is not raw["third"]  # a change to one use of an anchor leaves the others as written


def test_an_anchored_config_used_twice_takes_a_set_in_one_place(tmp_path):
    text = TINY.replace("  relu: {}\n  tanh: {model: {activation: tanh}}",
                        "  relu: &same {train: {l2: 0.001}}\n  tanh: *same")
    spec = write_spec(tmp_path, text)
    exp = load_experiment(str(spec), Overrides(sets=["configs.tanh.train.l2=0.01"]))
    by_name = {v.name: v.spec for v in exp.parts[0].variants}
    assert by_name["relu"].train.l2 == 0.001 and by_name["tanh"].train.l2 == 0.01


def test_set_null_resets_a_field_and_an_empty_value_is_refused(tmp_path):
    spec = str(write_spec(tmp_path))
    assert load_experiment(spec, Overrides(sets=["model.widths=null"])).parts[0].variants[0].spec.model.widths is None
    with pytest.raises(UserError, match=r"^--set model\.widths: expected a value after '='"):
        load_experiment(spec, Overrides(sets=["model.widths="]))


@pytest.mark.parametrize("value,seeds", [
    (3, [0, 1, 2]), ("0-4", [0, 1, 2, 3, 4]), ("0,1,2", [0, 1, 2]), (" 0 - 2 ", [0, 1, 2]), ("0,5-6", [0, 5, 6]),
    ([7, 9223372036854775807], [7, 9223372036854775807]), ("0-9999", list(range(10000))),
])
def test_seeds_are_read_one_way(value, seeds):
    assert parse_seeds(value, "seeds") == seeds


@pytest.mark.parametrize("value,message", [
    ("0-10000", "seeds: 0-10000 is 10001 seeds; at most 10000"),
    ("5-2", "seeds: the range 5-2 runs backwards; write 2-5"),
    ("1,,2", "seeds: expected seeds like 0,1,2 or 0-4"),
    ("0,1,0", "seeds: seeds repeat: 0 is given twice"),
    ([2 ** 63], "seeds: seeds run from 0 to 9223372036854775807"),
    (10001, "seeds: a number of seeds runs from 1 to 10000, got 10001"),
    (list(range(10001)), "seeds: 10001 seeds; at most 10000"),
])
def test_bad_seeds_are_refused(value, message):
    with pytest.raises(UserError, match=f"^{re.escape(message)}"):
        parse_seeds(value, "seeds")


def test_paths_in_a_spec_are_relative_to_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "specs"
    folder.mkdir()
    spec = write_spec(folder, TINY.replace("name: synthetic, options: {n: 240, classes: 3, size: 4}",
                                          "name: image-folder, path: data/imgs.zip"))
    monkeypatch.chdir(tmp_path)
    exp = load_experiment(str(spec.relative_to(tmp_path)))
    assert exp.parts[0].variants[0].spec.data.path == str(folder / "data" / "imgs.zip")
    assert exp.store == tmp_path / "runs" / "tiny.sqlite"


# ---------------------------------------------------------------- errors name the field


@pytest.mark.parametrize("edit,message", [
    (("tanh: {model: {activation: tanh}}", "tanh: {model: {activaton: tanh}}"),
     "configs.tanh.model.activaton: unknown field (did you mean 'activation'?)"),
    (("tanh: {model: {activation: tanh}}", "tanh: {model: {activation: tahn}}"),
     "configs.tanh.model.activation: unknown value 'tahn'"),
    (("init: he_normal}", "init: he_nromal}"), "model.init: unknown value 'he_nromal'"),
    (("seeds: [0, 1]", "seeds: [0, 0]"), "seeds: seeds repeat"),
    (("seeds: [0, 1]", "seeds: [-1]"), "seeds: expected a non-empty list of integers >= 0"),
    (("seeds: [0, 1]", "seeds: [9223372036854775808]"), "seeds: seeds run from 0 to 9223372036854775807"),
    (("lr: 0.05}", "lr: 1" + "0" * 400 + "}"), "train.optimizer.lr: expected a finite number, got a number of 401"),
    (("lr: 0.05}", "lr: 1e999}"), "train.optimizer.lr: expected a finite number, got inf"),
    (("epochs: 2,", "epochs: 0x8000000000000000,"), "train.epochs: 9223372036854775808 is beyond a 64-bit integer"),
    (("init: he_normal}", "init: he_normal, slots: {3: tanh}, off: [3]}"), "model.off: slot 3 is both tanh and off"),
    (("device: cpu", "device: cpu\nthreads: 100000"), "threads: 100000 asked for; this machine has"),
    (("device: cpu", "device: cpu\nthreads: 0"), "threads: expected a positive integer, got 0"),
    (("baseline: relu", "baseline: rleu"), "baseline: unknown value 'rleu' (did you mean 'relu'?)"),
    (("device: cpu", "devise: cpu"), "devise: unknown field (did you mean 'device'?)"),
    (("lr: 0.05}", "lr: fast}"), "train.optimizer.lr: expected a number, got 'fast'"),
    (("epochs: 2,", "epochs: 0,"), "train.epochs: expected a positive integer"),
    (("batch_size: 32,", "batch_size: 3.5,"), "train.batch_size: expected an integer"),
    (("name: tiny", "name: tiny one"), "name: expected a name of letters"),
    (("  relu: {}", "  relu: {modle: {}}"), "configs.relu.modle: unknown field (did you mean 'model'?)"),
    (("  relu: {}", "  'a|b': {}"), "configs.a|b: expected a name"),
    (("baseline: relu", "baseline: relu\ngrid: {model.activation: [relu, nope]}"),
     "grid.model.activation: unknown value 'nope'"),
    (("baseline: relu", "baseline: relu\ngrid: {lr: [1]}"), "grid.lr: grid keys are dotted fields"),
    (("baseline: relu", "baseline: relu\nprobes: [sparsty]"), "probes: unknown value 'sparsty'"),
    (("baseline: relu", "baseline: relu\nanalyses: [relu_dmeo]"), "analyses: unknown value 'relu_dmeo'"),
    (("baseline: relu", "baseline: relu\nanalyses: {activation_cost: {elements: 0}}"),
     "analyses.activation_cost.elements: expected a positive integer"),
    (("device: cpu", "device: cpu\ndevice: cuda"), "invalid YAML at line 4: duplicate key 'device'"),
    (("seeds: [0, 1]", "seeds: [0, 1"), "invalid YAML"),
])
def test_bad_specs_name_the_field(tmp_path, edit, message):
    old, new = edit
    assert old in TINY
    with pytest.raises(UserError) as info:
        load_experiment(str(write_spec(tmp_path, TINY.replace(old, new))))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_errors_inside_parts_name_the_part(tmp_path):
    text = "name: two\nparts:\n  first: {model: {widths: [4]}}\n  second: {configs: {x: {model: {slots: {0: relu}}}}}\n"
    with pytest.raises(UserError, match=r"^parts\.second\.configs\.x\.model\.slots: slot numbers are integers from 1"):
        load_experiment(str(write_spec(tmp_path, text)))


def test_set_errors_name_the_option(tmp_path):
    with pytest.raises(UserError, match=r"^--set model\.activaton: unknown field"):
        load_experiment(str(write_spec(tmp_path)), Overrides(sets=["model.activaton=relu"]))
    with pytest.raises(UserError, match="^overrides.parts: unknown value 'nope'"):
        load_experiment("quickstart", Overrides(parts=["nope"]))


def test_unknown_spec_or_preset(tmp_path):
    with pytest.raises(UserError, match="spec: unknown value 'quickstrat' .*did you mean 'quickstart'"):
        load_experiment("quickstrat")
    with pytest.raises(UserError, match="does not exist"):
        load_experiment(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("argv,message", [
    (["--set", "model.activation=nope"], "error: --set model.activation: unknown value 'nope'"),
    (["--seeds", "a,b"], "error: --seeds: expected seeds like 0,1,2"),
    (["--device", "tpu"], "error: device: expected auto, cpu, cuda or cuda:N"),
    (["--set", "model.widths=[1,a]"], "error: --set model.widths: expected a non-empty list of positive integers"),
    (["--set", "model.name=seed-cnn", "--set", "model.widths=null"],
     "error: configs.relu: data.image_size: seed-cnn needs images of at least"),
    (["--set", "data.name=mnist", "--set", "data.options={}", "--set", "data.download=false"],
     "error: dataset mnist: files not found"),
])
def test_cli_bad_input_is_one_line_exit_2_and_nothing_written(capsys, tmp_path, argv, message):
    store = tmp_path / "store.sqlite"
    code, out, err = relulab(capsys, "run", str(write_spec(tmp_path)), "--store", str(store), *argv)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert not store.exists() and out == ""


# ---------------------------------------------------------------- the sweep


def test_sweep_stores_every_run_once_and_resumes(tmp_path):
    exp = load_experiment(str(write_spec(tmp_path)), Overrides(store=str(tmp_path / "s.sqlite")))
    first = run_experiment(exp, log=quiet)
    assert (first.planned, first.trained, first.already_done) == (4, 4, 0)
    again = run_experiment(load_experiment(str(write_spec(tmp_path)), Overrides(store=str(tmp_path / "s.sqlite"))),
                           log=quiet)
    assert (again.trained, again.already_done) == (0, 4)
    more = run_experiment(load_experiment(str(write_spec(tmp_path)), Overrides(store=str(tmp_path / "s.sqlite"),
                                                                               seeds=[0, 1, 2])), log=quiet)
    assert (more.trained, more.already_done) == (2, 4)
    db = sqlite3.connect(tmp_path / "s.sqlite")
    assert db.execute("SELECT count(*), count(DISTINCT key) FROM runs").fetchone() == (6, 6)
    assert db.execute("SELECT count(*) FROM epochs").fetchone() == (12,)
    assert db.execute("SELECT count(*) FROM plan").fetchone() == (6,)
    assert db.execute("SELECT count(*) FROM claims").fetchone() == (0,)
    row = db.execute("SELECT code_version, torch_version, device, spec_json FROM runs LIMIT 1").fetchone()
    assert row[0].startswith("0.") and row[1] and row[2] and '"deep-mlp"' in row[3]


def test_diverged_runs_are_recorded_and_the_sweep_goes_on(tmp_path):
    text = TINY.replace("  tanh: {model: {activation: tanh}}",
                        "  tanh: {model: {activation: tanh}}\n  huge-lr: {train: {optimizer: {lr: 1.0e+30}}}")
    exp = load_experiment(str(write_spec(tmp_path, text)), Overrides(store=str(tmp_path / "s.sqlite"), epochs=4))
    summary = run_experiment(exp, log=quiet)
    assert summary.trained == 6 and summary.diverged == 2
    db = sqlite3.connect(tmp_path / "s.sqlite")
    rows = db.execute("SELECT variant, status, diverged_at, best_val_acc FROM runs ORDER BY variant").fetchall()
    assert [r[1] for r in rows if r[0] == "huge-lr"] == ["diverged", "diverged"]
    assert all(r[2] is not None and r[2] <= 4 for r in rows if r[0] == "huge-lr")
    assert all(r[1] == "done" for r in rows if r[0] != "huge-lr")


def test_analyses_are_stored_and_the_demo_printed(tmp_path):
    text = TINY + "analyses: {relu_demo: {}, activation_cost: {elements: 1000, min_run_time: 0.01}}\nprobes: [sparsity]\n"
    printed = []
    exp = load_experiment(str(write_spec(tmp_path, text)), Overrides(store=str(tmp_path / "s.sqlite")))
    run_experiment(exp, log=quiet, echo=printed.append)
    assert [line.strip() for line in printed[1:6]] == [
        "rectified(1.0) is 1.0", "rectified(1000.0) is 1000.0", "rectified(0.0) is 0.0", "rectified(-1.0) is 0.0",
        "rectified(-1000.0) is 0.0"]
    db = sqlite3.connect(tmp_path / "s.sqlite")
    assert sorted(r[0] for r in db.execute("SELECT name FROM artifacts")) == ["activation_cost", "relu_demo"]
    # sparsity of both slots before training (epoch 0) and after each of the 2 epochs, for 4 runs
    assert db.execute("SELECT count(*) FROM slot_stats WHERE stat = 'sparsity'").fetchone() == (4 * 3 * 2,)
    assert db.execute("SELECT min(epoch), max(epoch) FROM slot_stats").fetchone() == (0, 2)
    assert db.execute("SELECT min(epoch) FROM epochs").fetchone() == (1,)  # epoch 0 is no training epoch
    relu = db.execute("SELECT avg(value) FROM slot_stats s JOIN runs r ON r.key = s.run_key "
                      "WHERE r.variant = 'relu'").fetchone()[0]
    tanh = db.execute("SELECT avg(value) FROM slot_stats s JOIN runs r ON r.key = s.run_key "
                      "WHERE r.variant = 'tanh'").fetchone()[0]
    assert relu > 0.1 and tanh == 0.0


def test_the_readme_spec_example_runs(capsys, tmp_path, monkeypatch):
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    example = readme.split("### Spec format", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    exp = load_experiment(str(write_spec(tmp_path, example)))
    assert len(exp.parts[0].variants) == 8 and len(exp.planned()) == 24
    assert [v.name for v in exp.parts[0].variants][:2] == ["relu[lr=0.01]", "relu[lr=0.05]"]
    monkeypatch.chdir(tmp_path)
    code, out, err = relulab(capsys, "run", str(tmp_path / "spec.yaml"), "--seeds", "0,1", "--epochs", "1")
    assert code == 0, err
    assert out.strip().endswith("runs/my-sweep-report/report.html") and "16 runs trained" in err
    md = (tmp_path / "runs" / "my-sweep-report" / "report.md").read_text()
    assert "Command-line overrides, applied to every run: train.epochs=1" in md


def test_per_epoch_gradient_probes_are_measured_with_labels(tmp_path):
    exp = load_experiment(str(write_spec(tmp_path, TINY + "probes: [grad_norm, sparsity]\n")),
                          Overrides(store=str(tmp_path / "s.sqlite"), seeds=[0]))
    run_experiment(exp, log=quiet, echo=quiet)
    db = sqlite3.connect(tmp_path / "s.sqlite")
    grads = [r[0] for r in db.execute("SELECT value FROM slot_stats WHERE stat = 'grad_norm'")]
    assert len(grads) == 3 * 2 * 2 and all(g is not None and math.isfinite(g) and g > 0 for g in grads)  # epochs 0-2
