"""`relulab compare`: two experiments (or two configurations of one store) side by side, as the report compares."""
import contextlib
import csv
import io
import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from relulab.cli import main
from relulab.report.compare import compare_stores
from relulab.core.errors import UserError
from relulab.core.stats import compare, summarize
from robustness.runner import assert_refused, run_cli
from specs import TINY, relulab, write_spec

PCT = 100.0
OTHER_NAMES = TINY.replace("  relu: {}", "  elu: {model: {activation: elu}}").replace(
    "  tanh: {model: {activation: tanh}}", "  selu: {model: {activation: selu}}").replace("baseline: relu",
                                                                                          "baseline: elu")


def _relulab_run(folder: Path, text: str, store: str, *extra: str) -> Path:
    spec = write_spec(folder, text, name=f"{store}.yaml")
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        with pytest.raises(SystemExit) as exit_info:
            main(["run", str(spec), "--store", str(folder / store), "--no-report", *extra])
    assert exit_info.value.code == 0
    return folder / store


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Three small stores made by `relulab run` on TINY: A (seeds 0-1, 2 epochs), B (seeds 0-2, 3 epochs), and C
    (configurations of other names)."""
    folder = tmp_path_factory.mktemp("compare")
    return {"a": _relulab_run(folder, TINY, "a.sqlite"),
            "b": _relulab_run(folder, TINY, "b.sqlite", "--seeds", "0-2", "--epochs", "3"),
            "c": _relulab_run(folder, OTHER_NAMES, "c.sqlite", "--seeds", "0")}


def _stored(store: Path, variant: str, metric: str = "best_val_acc") -> list[float]:
    db = sqlite3.connect(store)
    try:
        return [r[0] for r in db.execute(f"SELECT {metric} FROM runs WHERE variant = ? AND status = 'done' "
                                         "ORDER BY seed", (variant,))]
    finally:
        db.close()


def test_two_stores_side_by_side_through_the_cli(stores, capsys):
    before = {name: path.read_bytes() for name, path in stores.items()}
    code, out, err = relulab(capsys, "compare", str(stores["a"]), str(stores["b"]))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[:2] == [f"A: {stores['a']} (experiment tiny)", f"B: {stores['b']} (experiment tiny)"]
    assert lines[3].split() == ["configuration", "n", "A", "A", "best", "val", "acc", "(%)", "n", "B", "B", "best",
                                "val", "acc", "(%)", "B", "-", "A", "(points)", "[95%", "interval]", "p", "(Welch)",
                                "verdict"]
    for variant in ("relu", "tanh"):
        a, b = _stored(stores["a"], variant), _stored(stores["b"], variant)
        direct = compare(b, a)  # B - A, as the report compares a configuration with its baseline
        row = next(line for line in lines if line.startswith(f"{variant} "))
        for text in (summarize(a).format(PCT), summarize(b).format(PCT), direct.format(PCT), direct.verdict,
                     f"{direct.p:.2g}"):
            assert text in row, (text, row)
        assert row.split()[1:2] == ["2"] and "  3  " in row
    # What makes the sides comparable is listed under the table.
    assert "The sides differ in what makes them comparable:" in out
    assert "  epochs: A 2; B 3 (every configuration)" in out
    assert {name: path.read_bytes() for name, path in stores.items()} == before  # opened read-only


def test_the_numbers_are_the_stats_of_the_stored_accuracies_from_python_and_json(stores, capsys, tmp_path):
    c = compare_stores(stores["a"], stores["b"], metric="final_val_acc")
    assert [r.config for r in c.rows] == ["relu", "tanh"]
    for row in c.rows:
        a, b = _stored(stores["a"], row.config, "final_val_acc"), _stored(stores["b"], row.config, "final_val_acc")
        assert list(row.values_a) == a and list(row.values_b) == b
        assert row.a == summarize(a) and row.b == summarize(b) and row.comparison == compare(b, a)
    assert [(d.aspect, d.a, d.b, d.configs) for d in c.differences] == [("epochs", "2", "3", ("relu", "tanh"))]

    code, out, err = relulab(capsys, "compare", str(stores["a"]), str(stores["b"]), "--metric", "final_val_acc",
                             "--json", "--csv", str(tmp_path / "c.csv"))
    assert code == 0, err
    shown = json.loads(out)
    assert shown["metric"] == "final_val_acc" and shown["b"] == {"store": str(stores["b"]), "experiment": "tiny"}
    for row, typed in zip(shown["rows"], c.rows):
        d = typed.comparison
        assert row["a"]["values"] == list(typed.values_a) and row["b"]["n"] == 3
        assert row["b_minus_a"] == {"diff": d.diff, "low": d.low, "high": d.high, "p": d.p, "p_adjusted": None,
                                    "distinguishable": d.distinguishable}
        assert row["verdict"] == d.verdict
    assert shown["correction"] == "none"
    text = (tmp_path / "c.csv").read_text()
    rows = list(csv.DictReader(io.StringIO(text)))  # a plain table: what differs is a column
    assert [(r["config_a"], float(r["diff"]), float(r["p_value"]), r["differs"]) for r in rows] == \
        [(t.config_a, t.comparison.diff, t.comparison.p, "epochs: A 2, B 3") for t in c.rows]
    assert len(pd.read_csv(tmp_path / "c.csv")) == 2


def test_two_configurations_of_one_store(stores, capsys):
    code, out, err = relulab(capsys, "compare", str(stores["b"]), "--config", "relu", "--config", "tanh")
    assert code == 0, err
    relu, tanh = _stored(stores["b"], "relu"), _stored(stores["b"], "tanh")
    direct = compare(tanh, relu)
    assert out.splitlines()[0] == f"A: relu, B: tanh, of {stores['b']} (experiment tiny)"
    row = next(line for line in out.splitlines() if line.startswith("relu vs tanh "))
    assert direct.format(PCT) in row and direct.verdict in row
    assert "differ" not in out  # same epochs, data, code and device
    (only,) = compare_stores(stores["b"], configs=["relu", "tanh"], metric="test_acc").rows
    assert only.comparison == compare(_stored(stores["b"], "tanh", "test_acc"), _stored(stores["b"], "relu",
                                                                                          "test_acc"))


def test_config_restricts_the_rows_of_two_stores(stores):
    c = compare_stores(stores["a"], stores["b"], configs=["tanh"])
    assert [r.config for r in c.rows] == ["tanh"]


def test_refusals_name_what_is_wrong(stores):
    a, b, c = (stores[k].read_bytes() for k in "abc")
    files = {"a.sqlite": a, "b.sqlite": b, "c.sqlite": c, "notes.txt": b"results\n"}
    for argv, names in [
        (["compare", "notes.txt", "b.sqlite"], "notes.txt is not a SQLite file"),
        (["compare", "a.sqlite", "missing.sqlite"], "missing.sqlite does not exist"),
        (["compare", "a.sqlite", "c.sqlite"], "the two sides share no configuration name; A, "),
        (["compare", "a.sqlite", "b.sqlite", "--config", "tahn"],
         "--config: unknown value 'tahn' (did you mean 'tanh'?); expected one of: relu, tanh (the configurations "
         "of A, "),
        (["compare", "a.sqlite", "c.sqlite", "--config", "relu"],
         "--config: unknown value 'relu' (did you mean 'elu'?); expected one of: elu, selu (the configurations of "
         "B, "),
        (["compare", "a.sqlite"], "--config: comparing within one experiment"),
        (["compare", "a.sqlite", "--config", "relu"], "takes two configurations, --config A --config B; got 1"),
        (["compare", "a.sqlite", "b.sqlite", "--metric", "accuracy"], "--metric: unknown value 'accuracy'"),
        (["compare", "a.sqlite", "b.sqlite", "--experiment-b", "tiney"],
         "--experiment-b: unknown value 'tiney' (did you mean 'tiny'?)"),
        (["compare", "a.sqlite", "b.sqlite", "--csv", "."], "--csv: "),
    ]:
        code, err, left = run_cli(argv, files=files)
        assert_refused(code, err, left, names)
    code, err, _ = run_cli(["compare", "a.sqlite", "c.sqlite"], files=files)
    assert "(experiment tiny), has: relu, tanh; B, " in err
    assert err.rstrip().endswith("(experiment tiny), has: elu, selu (name two of one store with --config A --config B)")


def test_a_store_of_several_experiments_asks_which(stores, tmp_path):
    both = tmp_path / "both.sqlite"
    both.write_bytes(stores["b"].read_bytes())
    _relulab_run(tmp_path, TINY.replace("name: tiny", "name: other"), "both.sqlite", "--seeds", "0")
    with pytest.raises(UserError, match="compare.experiment_a: .* holds several experiments"):
        compare_stores(both, stores["a"])
    # B's experiment defaults to A's name where B holds it
    assert compare_stores(stores["a"], both).b.experiment == "tiny"
    other = compare_stores(both, both, experiment_a="tiny", experiment_b="other")
    assert [(r.config, r.a.n, r.b.n) for r in other.rows] == [("relu", 3, 1), ("tanh", 3, 1)]


def test_a_correction_adjusts_the_rows_together(stores, capsys):
    from relulab.core.stats import holm

    plain = compare_stores(stores["a"], stores["b"])
    c = compare_stores(stores["a"], stores["b"], correction="holm")
    expected = holm([row.comparison.p for row in plain.rows])
    assert [d.p_adjusted for d in c.comparisons] == pytest.approx(expected)
    assert [d.distinguishable for d in c.comparisons] == [p < 0.05 for p in expected]
    assert [d.p for d in c.comparisons] == [row.comparison.p for row in plain.rows]  # Welch's p kept beside it
    code, out, err = relulab(capsys, "compare", str(stores["a"]), str(stores["b"]), "--correction", "holm")
    assert code == 0, err
    assert out.splitlines()[3].split()[-4:] == ["(Welch)", "p", "(Holm)", "verdict"]
    assert "Holm-adjusted p = " in out
    code, out, err = relulab(capsys, "compare", str(stores["a"]), str(stores["b"]), "--correction", "bh", "--json")
    shown = json.loads(out)
    assert shown["correction"] == "bh" and all(r["b_minus_a"]["p_adjusted"] is not None for r in shown["rows"])
    code, out, err = relulab(capsys, "compare", str(stores["a"]), str(stores["b"]), "--correction", "sidak")
    assert code == 2 and err == ("error: --correction: unknown value 'sidak'; expected one of: bh, holm, none\n")
