"""`relulab export`: the results tables written as CSV, Parquet or JSON, and read back as they were."""
import sys

import pandas as pd
import pytest

import relulab.results as results
from robustness.runner import assert_refused, run_cli
from specs import relulab
from results_store import store  # noqa: F401  (the fixture: a store of two experiments)

READERS = {"csv": pd.read_csv, "json": pd.read_json, "parquet": pd.read_parquet}


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_every_table_is_written_and_reads_back(store, capsys, tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")  # the parquet extra; CI installs it (.ci/run)
    code, out, err = relulab(capsys, "export", str(store), "--format", fmt, "-o", str(tmp_path / "t"))
    assert code == 0, err
    names = list(results.TABLES)
    assert out.splitlines() == [str(tmp_path / "t" / f"{name}.{fmt}") for name in names]
    for name in names:
        expected, back = results.TABLES[name](store), READERS[fmt](tmp_path / "t" / f"{name}.{fmt}")
        assert f"{name}: {len(expected)} rows" in err
        assert list(back.columns) == list(expected.columns) and len(back) == len(expected)
        for column in ("key", "search", "configuration"):  # who each row is, in the same order
            if column in expected:
                assert back[column].fillna("").astype(str).tolist() == expected[column].fillna("").astype(str).tolist()
        numbers = [c for c in ("best_val_acc", "val_acc", "value", "mean", "best_val_acc_ci_low") if c in expected]
        for column in numbers:
            assert back[column].astype(float).tolist() == pytest.approx(expected[column].astype(float).tolist(),
                                                                        nan_ok=True)


def test_one_experiment_skips_its_empty_tables_and_says_which(store, capsys, tmp_path):
    code, out, err = relulab(capsys, "export", str(store), "-o", str(tmp_path), "--experiment", "grid",
                             "--correction", "bh")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epochs.csv", "runs.csv", "slot_stats.csv", "summary.csv"]
    assert "no rows, not written: searches" in err
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert set(summary["experiment"]) == {"grid"} and set(summary["correction"]) == {"bh"}
    assert summary["p_adjusted"].notna().sum() == 4


def test_parquet_without_pyarrow_is_one_line_naming_the_extra(store, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    code, err, left = run_cli(["export", "s.sqlite", "--format", "parquet", "-o", "out"],
                              files={"s.sqlite": store.read_bytes()})
    assert_refused(code, err, left, "--format: parquet needs the pyarrow package, which is not installed; "
                                    "pip install relulab[parquet]")


@pytest.mark.parametrize("argv, message", [
    (["export", "missing.sqlite", "-o", "out"], "missing.sqlite does not exist"),
    (["export", "notes.txt", "-o", "out"], "notes.txt is not a SQLite file"),
    (["export", "s.sqlite", "--format", "xlsx", "-o", "out"], "--format: unknown value 'xlsx'; expected one of: csv, "
                                                               "json, parquet"),
    (["export", "s.sqlite", "-o", "notes.txt"], "--out: "),
    (["export", "s.sqlite", "-o", "out", "--experiment", "gird"], "--experiment: unknown value 'gird' (did you mean "
                                                                  "'grid'?)"),
    (["export", "s.sqlite", "-o", "out", "--correction", "bonferroni"], "--correction: unknown value 'bonferroni'"),
    (["export", "s.sqlite"], "Missing option '--out'"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(store, argv, message):
    code, err, left = run_cli(argv, files={"s.sqlite": store.read_bytes(), "notes.txt": b"results\n"})
    assert_refused(code, err, left, message)
