"""relulab.results: the store's tables as DataFrames, their columns and values checked against the store itself."""
import math

import pandas as pd
import pytest

import relulab.results as results
from relulab.core.errors import UserError
from relulab.core.stats import holm
from relulab.store import Store
from results_store import store  # noqa: F401  (the fixture: a store of two experiments)
from specs import store_rows as rows


def same(a, b) -> bool:
    """Equal, NA and NaN equal to None."""
    missing = [x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x)) for x in (a, b)]
    return all(missing) if any(missing) else a == b


def test_runs_hold_every_stored_run_with_its_hyperparameters_and_numbers(store):
    df = results.runs(store)
    stored = {r["key"]: r for r in rows(store, "SELECT * FROM runs")}
    assert sorted(df["key"]) == sorted(stored) and df["key"].is_unique
    for column in ("best_val_acc", "final_val_acc", "test_acc", "test_loss", "seconds", "status", "seed",
                   "best_epoch", "diverged_at", "params", "device", "code_version"):
        for key, value in zip(df["key"], df[column]):
            assert same(value, stored[key][column]), (column, key, value, stored[key][column])
    assert (df["epochs_trained"] == [stored[k]["epochs"] for k in df["key"]]).all()
    grid = df[df["experiment"] == "grid"].set_index("configuration")
    assert len(grid) == 12 and grid["in_plan"].all()
    tanh = grid.loc["tanh[lr=0.1]"]
    assert list(tanh["seed"]) == [0, 1]  # the plan's order: configuration, then seed
    tanh = tanh.iloc[0]
    assert (tanh["config"], tanh["grid"], tanh["baseline"]) == ("tanh", '{"train.optimizer.lr": 0.1}', "relu[lr=0.1]")
    assert (tanh["dataset"], tanh["model"], tanh["activation"], tanh["optimizer"]) == ("synthetic", "deep-mlp",
                                                                                      "tanh", "sgd")
    assert (tanh["lr"], tanh["batch_size"], tanh["epochs"], tanh["slots_off"]) == (0.1, 32, 2, "")
    assert tanh["init"] == "glorot_uniform" and tanh["model.init"] == "auto"  # auto, resolved as it trained
    assert tanh["train.optimizer.lr"] == 0.1 and tanh["model.widths"] == "[8, 8]"  # every spec field, flattened
    assert set(grid.loc["off-2[lr=0.05]", "slots_off"]) == {"2"} and not grid["val_is_test"].any()
    assert str(df["finished"].dtype).startswith("datetime64") and df["seed"].dtype == "Int64"


def test_a_diverged_run_and_a_searchs_runs(store):
    df = results.runs(store, experiment="searched")
    assert set(df["experiment"]) == {"searched"}
    huge = df[df["configuration"] == "huge-lr"]
    assert set(huge["status"]) == {"diverged"} and huge["diverged_at"].notna().all()
    assert (huge["lr"] == 1e30).all() and df.loc[df["configuration"] == "relu", "lr"].eq(0.001).all()  # adam's default
    off = df[~df["in_plan"]]  # the search's placements that are not configurations of the plan
    assert len(off) and set(off["configuration"]) <= {"off-1", "off-2", "all-relu"}
    assert (off["slots_off"] == off["configuration"].str.removeprefix("off-").where(off["configuration"] != "all-relu",
                                                                                   "")).all()
    assert off["config"].isna().all() and off["seed"].notna().all()


def test_epochs_are_the_stored_history(store):
    df = results.epochs(store)
    stored = rows(store, "SELECT * FROM epochs")
    assert len(df) == len(stored)
    by = df.set_index(["key", "epoch"])
    for r in stored:
        line = by.loc[(r["run_key"], r["epoch"])]
        for column in ("train_loss", "train_acc", "val_loss", "val_acc", "seconds"):
            assert same(line[column], r[column]), column
    assert {"configuration", "seed", "activation", "lr", "epoch"} <= set(df.columns)
    # joined on key with runs, each run's last epoch is its final accuracy
    last = df.sort_values("epoch").groupby("key").tail(1).merge(results.runs(store), on="key")
    done = last[last["status"] == "done"]
    assert (done["val_acc"] == done["final_val_acc"]).all() and len(done) > 10


def test_slot_stats_are_the_stored_probe_statistics(store):
    df = results.slot_stats(store)
    per_epoch, probed = df[df["source"] == "slot_stats"], df[df["source"] == "run_probes"]
    stored = rows(store, "SELECT * FROM slot_stats")
    assert len(per_epoch) == len(stored) and len(probed) == len(rows(store, "SELECT * FROM run_probes")) > 0
    one = stored[5]
    (value,) = per_epoch[(per_epoch["key"] == one["run_key"]) & (per_epoch["epoch"] == one["epoch"])
                         & (per_epoch["stat"] == one["stat"]) & (per_epoch["slot"] == one["slot"])]["value"]
    assert same(value, one["value"])
    assert set(per_epoch["stat"]) == {"sparsity"} and set(per_epoch["epoch"]) == {0, 1, 2}
    assert set(per_epoch["class"]) == {-1} and set(probed["probe_set"]) == {"first"}
    assert {-1, 0, 1, 2} <= set(probed["class"]) and (probed["images"] > 0).all()
    # sparsity by activation over epochs, as a pandas user would ask for it
    by = per_epoch[per_epoch["lr"] == 0.05].groupby(["activation", "epoch"])["value"].mean()
    assert by.loc[("relu", 2)] > 0 and len(by) == 6


def test_searches_are_the_stored_steps_and_candidates(store):
    df = results.searches(store)
    stored = rows(store, "SELECT * FROM search_candidates")
    assert len(df) == len(stored) and set(df["strategy"]) == {"oracle"} and set(df["status"]) == {"done"}
    by = df.set_index(["step", "placement"])
    for r in stored:
        line = by.loc[(r["step"], r["placement"])]
        for column in ("mean", "std", "ci_low", "ci_high", "diff", "p", "verdict", "relu_count", "seeds"):
            assert same(line[column], r[column]), column
    assert set(df["slots_off"]) == {"", "1", "2"} and (df["options.budget"] == 1).all()
    assert set(df["decision"]) == {rows(store, "SELECT decision FROM search_steps")[0]["decision"]}
    assert results.searches(store, experiment="grid").empty and "placement" in results.searches(store, "grid")


def test_summary_is_the_reports_statistics(store, tmp_path):
    from relulab.report import build_report

    df = results.summary(store, experiment="grid")
    report = pd.read_csv(build_report(store, "grid", tmp_path / "r").summary_csv)
    assert list(df["configuration"]) == list(report["configuration"]) and len(df) == 6
    for column in ("best_val_acc_mean", "best_val_acc_std", "best_val_acc_ci_low", "best_val_acc_ci_high",
                   "final_val_acc_mean", "seconds_mean", "seconds_ci_high", "test_acc_mean", "diff_vs_baseline",
                   "diff_ci_low", "diff_ci_high", "p_value", "runs_done", "seeds_planned"):
        assert df[column].astype(float).tolist() == pytest.approx(report[column].astype(float).tolist(),
                                                                  rel=1e-12, nan_ok=True), column
    assert [None if pd.isna(x) else bool(x) for x in df["distinguishable"]] == \
        [None if pd.isna(x) else bool(x) for x in report["distinguishable"]]
    relu = df.set_index("configuration").loc["relu[lr=0.05]"]
    accs = [r["best_val_acc"] for r in rows(store, "SELECT best_val_acc FROM runs WHERE variant = 'relu[lr=0.05]'")]
    assert relu["best_val_acc_mean"] == pytest.approx(sum(accs) / 2) and relu["best_val_acc_n"] == 2
    assert set(df["correction"]) == {"none"} and df["p_adjusted"].isna().all()


def test_summary_with_a_correction_adjusts_each_parts_comparisons_together(store):
    plain, adjusted = results.summary(store, "grid"), results.summary(store, "grid", correction="holm")
    compared = plain["p_value"].notna()
    assert compared.sum() == 4  # tanh and off-2 against relu, at each learning rate
    expected = holm(plain.loc[compared, "p_value"].tolist())
    assert adjusted.loc[compared, "p_adjusted"].tolist() == pytest.approx(expected)
    assert (adjusted.loc[compared, "distinguishable"] == (adjusted.loc[compared, "p_adjusted"] < 0.05)).all()
    assert set(adjusted["correction"]) == {"holm"}
    with pytest.raises(UserError, match=r"results.correction: unknown value 'bonferroni'"):
        results.summary(store, correction="bonferroni")


def test_an_open_store_stays_open_and_a_path_is_only_read(store):
    before = store.read_bytes()
    with Store(store, create=False) as open_store:
        assert len(results.runs(open_store, "grid")) == 12
        assert open_store.experiment_names()  # still open
    for table in results.TABLES.values():
        table(store)
    assert store.read_bytes() == before and not store.with_name("s.sqlite-wal").exists()


def test_bad_input_is_one_line_naming_what_is_wrong(store, tmp_path):
    with pytest.raises(UserError, match=r"results.experiment: unknown value 'gird' \(did you mean 'grid'\?\)"):
        results.runs(store, experiment="gird")
    with pytest.raises(UserError, match=r"does not exist"):
        results.epochs(tmp_path / "missing.sqlite")
    (tmp_path / "notes.txt").write_text("not a store\n")
    with pytest.raises(UserError, match=r"is not a SQLite file"):
        results.summary(tmp_path / "notes.txt")
    assert not (tmp_path / "missing.sqlite").exists()


def test_the_readmes_pandas_example_runs(store):
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    example = readme.split("### pandas", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert example.count('"runs/quickstart.sqlite"') == 3
    scope = {}
    exec(example.replace('"runs/quickstart.sqlite"', repr(str(store))), scope)
    assert len(scope["runs"]) == len(results.runs(store))
