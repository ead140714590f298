"""Searches over activation slots (relulab.search) and the probe command, scaled down to digits on the CPU."""
import copy
import dataclasses
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from scipy import stats as sps

from relulab.core.errors import UserError
from relulab.experiments import Overrides, load_experiment, run_experiment, run_key
from relulab.search import SearchOptions, probe_configuration, run_search
from relulab.search.measured import Measured
from relulab.search.strategies import Search
from relulab.store import Store
from specs import quiet, relulab, stored_runs, write_spec

MLP = """\
name: mlp
description: A 4-slot MLP on digits for the search tests.
device: cpu
threads: 1
seeds: [0, 1]
data: {name: digits}
model: {name: deep-mlp, widths: [16, 16, 16, 16], init: he_normal}
train: {epochs: 2, batch_size: 32, optimizer: {name: adam}}
configs:
  all-relu: {}
  off-4: {model: {off: [4]}}
baseline: all-relu
"""

# The greedy-relu-cifar10 preset's scaled-down twin, shrunk further for the suite: 200 images, 1 epoch, 2 seeds,
# narrower.
DIGITS_CNN = ["--epochs", "1", "--seeds", "0,1", "--set", "data.train_size=200", "--set",
              "model.widths=[3,3,4,4,4,4,8,8,8]"]




def mlp(tmp_path, store="s.sqlite", **overrides):
    return load_experiment(str(write_spec(tmp_path, MLP)), Overrides(store=str(tmp_path / store), **overrides))


def run_keys(path):
    db = sqlite3.connect(path)
    try:
        return [r[0] for r in db.execute("SELECT key FROM runs")]
    finally:
        db.close()


def test_every_strategy_on_an_mlp_stores_steps_candidates_and_correlations(tmp_path):
    exp = mlp(tmp_path)
    greedy = run_search(exp, SearchOptions("greedy", stat="ratio_num", order="highest", budget=2, patience=2,
                                           plain_rule=True), log=quiet)
    assert greedy.trained >= 4 and greedy.reused == 0  # the base and at least one proposal, two seeds each
    oracle = run_search(exp, SearchOptions("oracle", budget=1), log=quiet)
    exhaustive = run_search(exp, SearchOptions("exhaustive", k=2), log=quiet)
    budget = run_search(exp, SearchOptions("budget", keep=[4, 2, 0]), log=quiet)
    # 1 + 4 + 6 placements with up to two slots off, two seeds each: every one trained once in all
    keys = run_keys(tmp_path / "s.sqlite")
    assert len(keys) == len(set(keys)) == 2 * (1 + 4 + 6) + 2 * 1  # + budget's all-off placement
    assert exhaustive.reused >= greedy.trained and budget.trained == 2
    with Store(tmp_path / "s.sqlite") as store:
        found = {s.strategy: s for s in store.searches("mlp")}
        assert set(found) == {"greedy", "oracle", "exhaustive", "budget"}
        assert all(s.status == "done" for s in found.values())
        g = found["greedy"]
        first = [c for c in g.candidates if c.step == 1]
        assert first[0].placement == "all-relu" and first[1].reference == "all-relu"
        # greedy proposed the active slot with the highest ratio_num on the all-ReLU model (mean over seeds)
        base_keys = [run_key(exp.parts[0].variants[0].spec, s) for s in (0, 1)]
        rows = [r for r in store.run_probes(base_keys, "first") if r["stat"] == "ratio_num" and r["class"] < 0]
        means = {slot: sum(r["value"] for r in rows if r["slot"] == slot) / 2 for slot in (1, 2, 3, 4)}
        assert first[1].slot == max(means, key=means.get)
        assert first[1].heuristic == pytest.approx(means[first[1].slot])
        o = found["oracle"]
        assert len([c for c in o.candidates if c.step == 1]) == 5
        corr = {c.stat: c for c in o.correlations}
        assert {"ratio_num", "ratio_sum", "std", "dead_fraction", "sign_entropy", "grad_norm"} <= set(corr)
        assert corr["ratio_num"].n == 4 and corr["saturation"].n == 0  # no sigmoid/tanh slot
        e = found["exhaustive"]
        assert len(e.candidates) == 11 and e.steps[0].chosen == e.candidates[0].placement
        b = found["budget"]
        assert [len(c.off) for c in b.candidates] == [0, 2, 4]
        assert [c.relu_count for c in b.candidates] == [64, 32, 0]  # 16 activations per slot that is on
    # the same search again: nothing trained, the same id, the same steps
    again = run_search(exp, SearchOptions("oracle", budget=1), log=quiet)
    assert (again.id, again.trained) == (oracle.id, 0) and again.result == oracle.result


def test_searches_reuse_runs_of_relulab_run_and_the_other_way_round(tmp_path):
    exp = mlp(tmp_path)
    run_experiment(exp, log=quiet)  # all-relu and off-4, two seeds, no probes kept (their weights are)
    lines = []
    outcome = run_search(exp, SearchOptions("oracle", budget=1), log=lines.append)
    # the base must be probed (the judgement uses its statistics): from its kept weights, nothing trained for
    # it; off-4 is reused as it is; off-1, off-2, off-3 are trained
    assert (outcome.trained, outcome.reused, outcome.probed_again) == (6, 4, 0)
    assert any("without their probe statistics: probed their kept weights" in line for line in lines)
    keys = run_keys(tmp_path / "s.sqlite")
    assert len(keys) == len(set(keys)) == 10
    # a sweep that kept no weights: the base is trained again to be probed, as copies stored on their own
    exp_n = mlp(tmp_path, "n.sqlite", keep_weights=False)
    run_experiment(exp_n, log=quiet)
    outcome = run_search(exp_n, SearchOptions("oracle", budget=1), log=lines.append)
    assert (outcome.trained, outcome.reused, outcome.probed_again) == (6, 4, 2)
    keys = run_keys(tmp_path / "n.sqlite")
    assert len(keys) == len(set(keys)) == 12 and sum(k.endswith("-retrained") for k in keys) == 2
    # the other way round: a search first, then a sweep trains only what the search did not
    exp2 = mlp(tmp_path, "t.sqlite")
    first = run_search(exp2, SearchOptions("exhaustive", k=1), log=quiet)
    assert first.probed_again == 0 and first.trained == 10
    summary = run_experiment(exp2, log=quiet)
    assert (summary.trained, summary.already_done) == (0, 4)


def test_a_killed_search_resumes_with_every_run_once_and_the_same_path(tmp_path):
    class Killed(BaseException):
        pass

    seen = []

    def dies_after_five_runs(line):
        if " seed " in line:
            seen.append(line)
            if len(seen) == 5:
                raise Killed()

    options = SearchOptions("oracle", budget=2, plain_rule=True)
    with pytest.raises(Killed):
        run_search(mlp(tmp_path), options, log=dies_after_five_runs)
    with Store(tmp_path / "s.sqlite") as store:
        assert store.searches()[0].status == "running"
        assert store.db.execute("SELECT count(*) FROM claims").fetchone()[0] == 0  # released on the way out
    resumed = run_search(mlp(tmp_path), options, log=quiet)
    fresh = run_search(mlp(tmp_path, "fresh.sqlite"), options, log=quiet)
    assert resumed.result == fresh.result and resumed.reused >= 5
    keys = run_keys(tmp_path / "s.sqlite")
    assert len(keys) == len(set(keys)) == len(run_keys(tmp_path / "fresh.sqlite"))
    with Store(tmp_path / "s.sqlite") as a, Store(tmp_path / "fresh.sqlite") as b:
        sa, sb = a.searches()[0], b.searches()[0]
        assert sa.status == "done"
        strip = lambda steps: [dataclasses.replace(step, search_id="") for step in steps]  # noqa: E731
        assert strip(sa.steps) == strip(sb.steps)
        assert [c.mean for c in sa.candidates] == [c.mean for c in sb.candidates]



def test_kill_9_mid_search_then_the_same_command_finishes_it(tmp_path):
    # pack: false commits runs one by one, so that the kill lands between runs of one step
    spec = write_spec(tmp_path, MLP.replace("threads: 1", "threads: 1\npack: false").replace("epochs: 2", "epochs: 3"))
    store = tmp_path / "k.sqlite"
    argv = [sys.executable, "-c", "from relulab.cli import main; main()", "search", str(spec), "--strategy",
            "oracle", "--budget", "1", "--store", str(store), "--no-report"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start = time.time()
    while stored_runs(store) < 3:
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < 120, "the search made no progress"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = stored_runs(store)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{10 - killed_at} runs trained, {killed_at} already in the store" in done.stderr
    base = load_experiment(str(spec), Overrides(store=str(store))).parts[0].variants[0].spec
    expected = set()
    for off in ((), (1,), (2,), (3,), (4,)):  # the base and its single-slot changes, two seeds
        variant = copy.deepcopy(base)
        variant.model.slots = {i: "identity" for i in off}
        expected |= {run_key(variant, seed) for seed in (0, 1)}
    keys = run_keys(store)
    assert sorted(keys) == sorted(expected)  # every run, none twice
    with Store(store) as a:
        (s,) = a.searches()
        assert s.status == "done" and len([c for c in s.candidates if c.step == 1]) == 5
        assert a.db.execute("SELECT count(*) FROM claims").fetchone()[0] == 0
        assert a.integrity_check() == "ok"


def _measured(off, accs, heuristics=None):
    return Measured(frozenset(off), "off-" + "-".join(map(str, sorted(off))) if off else "base", [], accs, 0, 0,
                    heuristics or {})


def test_judgement_is_scipy_rank_correlation_and_picks():
    diffs = {1: -0.02, 2: 0.01, 3: 0.03, 4: -0.05, 5: 0.0}
    values = {1: 0.5, 2: 0.9, 3: 1.4, 4: 0.2, 5: 1.0}
    base = _measured((), [0.80, 0.81, 0.79], {"ratio_num": values, "saturation": {i: math.nan for i in values}})
    singles = {i: _measured((i,), [a + 0.80 + d for a in (0.0, 0.01, -0.01)]) for i, d in diffs.items()}
    rows = {r["stat"]: r for r in Search.judge(None, base, singles)}
    xs, ys = [values[i] for i in diffs], [singles[i].mean - base.mean for i in diffs]
    assert rows["ratio_num"]["n"] == 5
    assert rows["ratio_num"]["spearman"] == pytest.approx(sps.spearmanr(xs, ys)[0])
    assert rows["ratio_num"]["kendall"] == pytest.approx(sps.kendalltau(xs, ys)[0])
    assert rows["ratio_num"]["highest_pick_diff"] == pytest.approx(0.03)  # slot 3 has the highest value
    assert rows["ratio_num"]["lowest_pick_diff"] == pytest.approx(-0.05)
    assert rows["ratio_num"]["best_diff"] == pytest.approx(0.03)
    assert rows["saturation"]["n"] == 0 and rows["saturation"]["spearman"] is None


def test_acceptance_rule_welch_or_plain():
    welch = SimpleNamespace(options=SimpleNamespace(alpha=0.05, plain_rule=False, accept_all=False))
    plain = SimpleNamespace(options=SimpleNamespace(alpha=0.05, plain_rule=True, accept_all=False))
    every = SimpleNamespace(options=SimpleNamespace(alpha=0.05, plain_rule=False, accept_all=True))
    current = _measured((), [0.780, 0.785, 0.790])
    slightly = _measured((7,), [0.781, 0.792, 0.786])  # a higher mean, within seed noise
    clearly = _measured((7,), [0.810, 0.812, 0.815])
    worse = _measured((7,), [0.700, 0.702, 0.701])
    assert Search.accepts(welch, slightly, current)[0] is False
    assert Search.accepts(plain, slightly, current)[0] is True
    assert Search.accepts(welch, clearly, current)[0] is True
    ok, why = Search.accepts(welch, worse, current)
    assert not ok and "(worse)" in why
    ok, why = Search.accepts(every, worse, current)  # EASIER's rule: accepted, and the verdict still said
    assert SearchOptions("greedy").identity() == {k: v for k, v in SearchOptions("greedy", accept_all=True).identity()
                                                  .items() if k != "accept_all"}  # earlier ids stay as they were
    assert ok and "-8.40 points, distinguishable" in why and "accept_all" in why
    ok, why = Search.accepts(welch, _measured((7,), [0.9]), current)
    assert not ok and "too few seeds" in why and "--plain-rule" in why


def test_the_greedy_relu_search_scaled_down_on_digits_cli(capsys, tmp_path):
    """The commands the GPU runs use, on the search-digits preset (greedy-relu-cifar10's twin): oracle, then greedy
    reusing its runs, then the probe tables from the store, then the sweep training only what is missing."""
    store = str(tmp_path / "d.sqlite")
    code, out, err = relulab(capsys, "search", "search-digits", "--strategy", "oracle", "--budget", "1",
                             *DIGITS_CNN, "--store", store)
    assert code == 0, err
    assert "22 runs trained, 0 already in the store" in err  # base + 10 single-slot changes, 2 seeds
    assert "rank correlation with the measured change" in out and out.strip().endswith("report.html")
    code, out, err = relulab(capsys, "search", "search-digits", "--strategy", "greedy", "--order", "highest",
                             "--plain-rule", *DIGITS_CNN, "--store", store)
    assert code == 0, err
    assert "0 runs trained, 4 already in the store" in err  # its step reuses the oracle's runs
    code, out, err = relulab(capsys, "probe", "search-digits", "--config", "all-relu", "--seeds", "0", "--epochs", "1",
                             "--set", "data.train_size=200", "--set", "model.widths=[3,3,4,4,4,4,8,8,8]",
                             "--store", store)
    assert code == 0, err
    assert "probe statistics from the store" in err and "ratio_num: all-relu seed 0, epoch 1" in out
    assert "average" in out and "ratio_sum" in out
    assert (tmp_path / "search-digits-probes" / "all-relu-seed0-first-ratio_num.png").is_file()
    csv_text = (tmp_path / "search-digits-probes" / "all-relu-seed0-first.csv").read_text()
    assert csv_text.count("\n") == 1 + 15 * 10 * 11  # every statistic, slot and class (+ average)
    code, out, err = relulab(capsys, "run", "search-digits", *DIGITS_CNN, "--store", store, "--no-report")
    assert code == 0, err
    assert "6 runs trained, 6 already done" in err  # all-relu, off-2 and off-7 came from the searches
    report = (tmp_path / "search-digits-report" / "report.md").read_text()
    for heading in ("Search: oracle", "Oracle step 1", "Heuristic judgement, step 1", "Search: greedy by ratio_num",
                    "ratio_num per layer and class: all-relu", "Probe statistics of all-relu"):
        assert heading in report
    html = (tmp_path / "search-digits-report" / "report.html").read_text()
    assert "Search: oracle" in html and "data:image/png;base64" in html


def test_budget_and_relu_counts_on_the_cnn(tmp_path):
    exp = load_experiment("search-digits", Overrides(store=str(tmp_path / "b.sqlite"), epochs=1, seeds=[0],
                                                     sets=["data.train_size=100"]))
    outcome = run_search(exp, SearchOptions("budget", keep=[10, 5, 0], stat="std", order="lowest"), log=quiet)
    sizes = [30 * 30 * 6, 28 * 28 * 6, 26 * 26 * 12, 24 * 24 * 12, 22 * 22 * 12, 20 * 20 * 12, 8 * 8 * 24,
             6 * 6 * 24, 24, 10]
    assert outcome.result["best_by_kept"]["10"]["relu_count"] == sum(sizes)
    with Store(tmp_path / "b.sqlite") as store:
        (s,) = store.searches()
        counts = {len(c.off): c.relu_count for c in s.candidates}
        assert counts[0] == sum(sizes) and counts[10] == 0 and 0 < counts[5] < sum(sizes)
        # one seed: the verdicts say there is nothing to compare with
        assert all(c.verdict is None or "too few seeds" in c.verdict for c in s.candidates)


def test_probe_at_chosen_epochs_trains_once_then_reads_the_store(tmp_path):
    exp = mlp(tmp_path)
    first = probe_configuration(exp, seed=1, probe_set="per-class:2", epochs="1,2", log=quiet)
    assert first.trained and sorted(first.results) == [1, 2]
    assert first.results[2].counts == [2] * 10 and set(first.results[2].overall) >= {"ratio_num", "grad_norm"}
    again = probe_configuration(exp, seed=1, probe_set="per-class:2", epochs="1,2", log=quiet)
    assert not again.trained and again.results[1].overall == first.results[1].overall
    last = probe_configuration(exp, seed=1, probe_set="per-class:2", log=quiet)  # the final epoch: stored
    assert not last.trained and list(last.results) == [2]
    assert run_keys(tmp_path / "s.sqlite") == [first.key]


def test_per_epoch_probes_of_a_spec_with_the_new_statistics(tmp_path):
    text = MLP.replace("baseline: all-relu", "baseline: all-relu\nprobes: [ratio_num, std, dead_fraction]\n"
                                             "probe_size: 64")
    exp = load_experiment(str(write_spec(tmp_path, text)), Overrides(store=str(tmp_path / "p.sqlite")))
    run_experiment(exp, log=quiet)
    db = sqlite3.connect(tmp_path / "p.sqlite")
    assert db.execute("SELECT count(*) FROM slot_stats WHERE stat = 'ratio_num' AND value > 0").fetchone() == (
        4 * 3 * 4,)  # 4 runs x (before training + 2 epochs) x 4 slots
    from relulab.report import build_report

    files = build_report(tmp_path / "p.sqlite")
    md = files.markdown.read_text()
    assert "### ratio_num over epochs" in md and "### dead_fraction over epochs" in md


@pytest.mark.parametrize("argv,message", [
    (["--strategy", "beam"], "--strategy: unknown value 'beam'"),
    (["--stat", "ratio"], "--stat: unknown value 'ratio'"),
    (["--order", "middle"], "--order: unknown value 'middle'"),
    (["--budget", "5"], "--budget: expected 1 to 4"),
    (["--strategy", "exhaustive", "--k", "3", "--max-placements", "10"], "--k: that is 15 placements"),
    (["--strategy", "budget", "--keep", "0,9"], "--keep: expected numbers of slots kept on from 0 to 4"),
    (["--strategy", "budget", "--keep", "a"], "--keep: expected numbers like 0,2,4"),
    (["--probe-set", "val:0"], "--probe-set: expected first, per-class:N or val:N"),
    (["--config", "nope"], "--config: unknown value 'nope'"),
    (["--metric", "loss"], "--metric: unknown value 'loss'"),
    (["--alpha", "2"], "--alpha: expected a number between 0 and 1"),
    (["--set", "model.activaton=relu"], "--set model.activaton: unknown field"),
])
def test_search_bad_input_is_one_line_exit_2_and_nothing_written(capsys, tmp_path, argv, message):
    store = tmp_path / "x.sqlite"
    code, out, err = relulab(capsys, "search", str(write_spec(tmp_path, MLP)), "--store", str(store), *argv)
    assert code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not store.exists() and out == ""


@pytest.mark.parametrize("argv,message", [
    (["--probe-set", "all"], "--probe-set: expected first, per-class:N or val:N"),
    (["--set", "all"], "--set: expected KEY=VALUE such as model.widths=[64,64], got 'all'"),
    (["--epoch", "9"], "--epoch: epochs run from 1 to 2"),
    (["--epoch", "x"], "--epoch: expected last, all, or epochs"),
    (["--stats", "ratio_nu"], "--stats: unknown value 'ratio_nu' (did you mean 'ratio_num'?)"),
    (["--config", "off-3"], "--config: unknown value 'off-3'"),
    (["--set", "train.epochs=0"], "--set train.epochs: expected a positive integer"),
])
def test_probe_bad_input_is_one_line_exit_2_and_nothing_written(capsys, tmp_path, argv, message):
    store = tmp_path / "x.sqlite"
    code, out, err = relulab(capsys, "probe", str(write_spec(tmp_path, MLP)), "--store", str(store), *argv)
    assert code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not store.exists() and out == ""


def test_a_statistic_undefined_everywhere_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="^search.stat: saturation is undefined at every active slot of all-relu"):
        run_search(mlp(tmp_path), SearchOptions("greedy", stat="saturation"), log=quiet)


@pytest.mark.parametrize("options,field,flag", [
    (dict(strategy="beam"), "search.strategy: unknown value 'beam'", "--strategy: unknown value 'beam'"),
    (dict(strategy="exhaustive", k=3, max_placements=10), "search.k: that is 15 placements of 4 slots (each over "
     "every seed), more than search.max_placements 10; ask for fewer or raise search.max_placements",
     "--k: that is 15 placements of 4 slots (each over every seed), more than --max-placements 10; ask for fewer or "
     "raise --max-placements"),
    (dict(strategy="budget", keep="0-99999999999"), "search.keep: 0-99999999999 is", "--keep: 0-99999999999 is"),
])
def test_library_errors_name_the_field_and_the_command_the_option(capsys, tmp_path, options, field, flag):
    """A Python user reads the field of SearchOptions; the command's user the option that sets it."""
    with pytest.raises(UserError, match=f"^{re.escape(field)}"):
        run_search(mlp(tmp_path), SearchOptions(**options), log=quiet)
    argv = [text for name, value in options.items() for text in (f"--{name.replace('_', '-')}", str(value))]
    code, out, err = relulab(capsys, "search", str(write_spec(tmp_path, MLP)), "--store", str(tmp_path / "x.sqlite"),
                             *argv)
    assert code == 2 and err.startswith(f"error: {flag}") and "search." not in err, err


def test_every_strategy_says_which_options_shape_its_path():
    from relulab.search.options import PATH_OPTIONS
    from relulab.search.strategies import STRATEGIES

    assert sorted(PATH_OPTIONS) == sorted(STRATEGIES)


# ---------------------------------------------------------------- judged on held-out data


def test_rank_correlations_row_by_row_are_scipys():
    from relulab.core.stats import kendall_rows, spearman_rows

    rng = __import__("numpy").random.default_rng(3)
    x = rng.integers(0, 4, (50, 7)).astype(float)  # many ties, as resampled slots give
    y = rng.normal(size=(50, 7))
    y[:, 3] = y[:, 2]
    for i in range(50):
        if len(set(x[i])) > 1:
            assert spearman_rows(x[i:i + 1], y[i:i + 1])[0] == pytest.approx(sps.spearmanr(x[i], y[i])[0])
            assert kendall_rows(x[i:i + 1], y[i:i + 1])[0] == pytest.approx(sps.kendalltau(x[i], y[i])[0])
    assert math.isnan(spearman_rows(x[:1] * 0, y[:1])[0]) and math.isnan(kendall_rows(x[:1] * 0, y[:1])[0])


def test_holm_and_the_chance_of_a_false_positive():
    from relulab.core.stats import chance_of_a_false_positive, holm

    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, None, float("nan"), 0.9]) == [1.0, None, None, 1.0]  # 2 x 0.5, then never below it
    assert chance_of_a_false_positive(14) == pytest.approx(1 - 0.95 ** 14) and round(1 - 0.95 ** 14, 2) == 0.51


def _per_seed(off, seed_accs, seed_heuristics=None):
    from relulab.search.measured import _finite_mean

    seed_heuristics = seed_heuristics or {}
    heuristics = {stat: {slot: _finite_mean(v) for slot, v in by.items()} for stat, by in seed_heuristics.items()}
    accs = [a for a in seed_accs if math.isfinite(a)]
    return Measured(frozenset(off), "off-" + "-".join(map(str, sorted(off))) if off else "base",
                    [f"k{i}" for i in range(len(seed_accs))], accs, 0, 0, heuristics, list(seed_accs),
                    seed_heuristics)


def test_judgement_bootstrap_resamples_slots_then_seeds_deterministically():
    """The interval is the percentile interval of rho over resamples of the slots and, within each, of the
    seeds (the same seeds for the model and its changes); checked against a plain loop over the same draws."""
    import numpy as np

    from relulab.search.judgement import judge

    rng = np.random.default_rng(0)
    slots, seeds = [1, 2, 3, 4, 5, 6], 3
    values = {s: list(rng.normal(s, 0.5, seeds)) for s in slots}  # the statistic per seed on the base model
    base = _per_seed((), [0.80, 0.82, 0.81], {"ratio_num": values})
    singles = {s: _per_seed((s,), list(0.80 + 0.004 * s + rng.normal(0, 0.01, seeds))) for s in slots}
    rows = {r["stat"]: r for r in judge(base, singles, resamples=300, seed=7)}
    r = rows["ratio_num"]
    assert r["resamples"] == 300 and r["spearman_low"] <= r["spearman"] <= r["spearman_high"]
    assert r["kendall_low"] <= r["kendall"] <= r["kendall_high"]
    assert judge(base, singles, resamples=300, seed=7)[0] == r  # seeded: the same every time
    draws = np.random.default_rng(7)
    pick_slots, pick_seeds = draws.integers(0, 6, (300, 6)), draws.integers(0, seeds, (300, seeds))
    rhos, taus = [], []
    for chosen, within in zip(pick_slots, pick_seeds):
        xs = [np.mean([values[slots[i]][j] for j in within]) for i in chosen]
        ys = [np.mean([singles[slots[i]].seed_accs[j] for j in within]) - np.mean([base.seed_accs[j] for j in within])
              for i in chosen]
        if len(set(xs)) > 1 and len(set(ys)) > 1:
            rhos.append(sps.spearmanr(xs, ys)[0])
            taus.append(sps.kendalltau(xs, ys)[0])
    assert [r["spearman_low"], r["spearman_high"]] == pytest.approx(list(np.percentile(rhos, [2.5, 97.5])))
    assert [r["kendall_low"], r["kendall_high"]] == pytest.approx(list(np.percentile(taus, [2.5, 97.5])))
    # many statistics at once: Holm-adjusted p-values beside the raw ones, and how many were compared
    assert r["compared"] == 1 and r["spearman_p_holm"] == pytest.approx(r["spearman_p"])


def test_judgement_compares_each_pick_with_a_random_slot():
    """Chance is the mean change over the judged slots (a slot drawn at random, on average); each pick's lead
    over it gets the percentile interval of (pick - chance) over the same resamples as the correlations."""
    import numpy as np

    from relulab.search.judgement import judge

    rng = np.random.default_rng(1)
    slots, seeds = [1, 2, 3, 4, 5], 3
    values = {s: list(rng.normal(s, 0.3, seeds)) for s in slots}
    base = _per_seed((), [0.80, 0.81, 0.79], {"sign_entropy": values})
    singles = {s: _per_seed((s,), list(0.80 - 0.01 * s + rng.normal(0, 0.002, seeds))) for s in slots}
    r = judge(base, singles, resamples=200, seed=3)[0]
    diffs = {s: singles[s].mean - base.mean for s in slots}
    assert r["random_diff"] == pytest.approx(np.mean(list(diffs.values())))
    assert r["lowest_pick_diff"] == pytest.approx(diffs[1]) and r["highest_pick_diff"] == pytest.approx(diffs[5])
    draws = np.random.default_rng(3)
    pick_slots, pick_seeds = draws.integers(0, 5, (200, 5)), draws.integers(0, seeds, (200, seeds))
    leads = {"highest": [], "lowest": []}
    for chosen, within in zip(pick_slots, pick_seeds):
        xs = [np.mean([values[slots[i]][j] for j in within]) for i in chosen]
        ys = [np.mean([singles[slots[i]].seed_accs[j] for j in within]) - np.mean([base.seed_accs[j] for j in within])
              for i in chosen]
        leads["highest"].append(ys[int(np.argmax(xs))] - np.mean(ys))
        leads["lowest"].append(ys[int(np.argmin(xs))] - np.mean(ys))
    for pick, values_ in leads.items():
        expected = list(np.percentile(values_, [2.5, 97.5]))
        assert [r[f"{pick}_vs_random_low"], r[f"{pick}_vs_random_high"]] == pytest.approx(expected)
    assert r["lowest_vs_random_low"] > 0 > r["highest_vs_random_high"]  # the low-entropy slot beats chance here


def test_greedy_and_budget_get_the_oracles_judgement_where_their_runs_allow_it(capsys, tmp_path):
    """A greedy search whose proposals from all-relu are all rejected has measured every single-slot change of
    all-relu, as the oracle's first step does; the same for budget with every placement of 3 slots on. All three
    show the same judgement (one code path), with bootstrap intervals; candidates carry their test accuracy."""
    from relulab.cli.search import print_search
    from relulab.report import build_report
    from relulab.search import load_search_views

    exp = mlp(tmp_path)
    never = 1e-12  # an acceptance level no difference over 2 seeds reaches: every proposal is rejected
    run_search(exp, SearchOptions("greedy", budget=1, patience=4, alpha=never), log=quiet)
    run_search(exp, SearchOptions("oracle", budget=1, alpha=never), log=quiet)
    run_search(exp, SearchOptions("budget", keep=[4, 3], choose="exhaustive"), log=quiet)
    with Store(tmp_path / "s.sqlite") as store:
        views = {s["strategy"]: s for s in load_search_views(store, "mlp")}
        runs = store.runs([k for c in views["oracle"]["candidates"] for k in c["run_keys"]])
    g, o, b = views["greedy"], views["oracle"], views["budget"]
    assert [st["decision"] for st in g["steps"]] == ["rejected"] * 4
    strip = lambda rows: {r["stat"]: {k: v for k, v in r.items() if k != "step"} for r in rows}  # noqa: E731
    assert {r["step"] for r in g["judgements"]} == {4} and {r["current"] for r in g["judgements"]} == {"all-relu"}
    assert strip(g["judgements"]) == strip(o["judgements"]) == strip(b["judgements"])
    ratio = strip(o["judgements"])["ratio_num"]
    assert ratio["n"] == 4 and ratio["resamples"] == 1000 and ratio["compared"] >= 10
    # the oracle's stored correlations are the same numbers (computed as it ran)
    stored = {c["stat"]: c for c in o["correlations"]}
    assert stored["ratio_num"]["spearman"] == pytest.approx(ratio["spearman"])
    # every candidate's test accuracy: the mean over its stored runs
    for c in o["candidates"]:
        tests = [runs[k]["test_acc"] for k in c["run_keys"]]
        assert c["test_mean"] == pytest.approx(sum(tests) / len(tests)) and c["test_n"] == 2
    print_search(g)
    out = capsys.readouterr().out
    assert "test acc (%)" in out and "rank correlation with the measured change (step 4" in out
    assert "Spearman [95% bootstrap]" in out and "p (Holm)" in out
    assert re.search(r"\d+ statistics are compared at once", out)
    files = build_report(tmp_path / "s.sqlite")
    md = files.markdown.read_text()
    for text in ("| step | current | proposal | statistic | proposal acc (%) | proposal test acc (%) |",
                 "| slot off | placement | acc (%) | test acc (%) |", "| slots on | placement | slots off | ReLU count "
                 "| acc (%) | test acc (%) |", "Heuristic judgement, step 4: statistics of all-relu",
                 "Spearman rho [95% bootstrap] | p | p (Holm)", "by luck alone is 1 - 0.95^"):
        assert text in md, text
    by_name = {p.name: p.read_text() for p in files.extra}
    greedy_csv = next(text for name, text in by_name.items() if name == f"search-{g['id']}-correlations.csv")
    assert greedy_csv.splitlines()[0].startswith("search,strategy,step,current,stat,n,spearman,spearman_low,")
    assert f"search-{b['id']}-correlations.csv" in by_name
    assert by_name[f"search-{o['id']}.csv"].splitlines()[0].endswith(
        "test_acc_mean,test_acc_ci_low,test_acc_ci_high,test_acc_runs,val_is_test")


def test_probe_marks_degenerate_per_class_cells_and_out_keeps_everything_there(capsys, tmp_path):
    """On the `first` probe set every class has one image: sign entropy there is 0 by definition, so the tables
    say n/a instead of showing it as data. `--out DIR` writes only in DIR (and the store): no report beside the
    store unless --report asks for one, and then under DIR."""
    spec = write_spec(tmp_path, MLP)
    store, out = tmp_path / "store" / "s.sqlite", tmp_path / "probes"
    code, printed, err = relulab(capsys, "probe", str(spec), "--stats", "sign_entropy,ratio_num", "--store",
                                 str(store), "--out", str(out))
    assert code == 0, err
    entropy = printed.split("sign_entropy: all-relu seed 0")[1].split("ratio_num: all-relu seed 0")[0]
    assert entropy.count("n/a (1 image)") == 4 * 10  # every slot, every class; the average column is data
    assert "n/a" not in printed.split("ratio_num: all-relu seed 0")[1]
    assert sorted(p.name for p in out.iterdir()) == ["all-relu-seed0-first-ratio_num.png", "all-relu-seed0-first-"
                                                     "sign_entropy.png", "all-relu-seed0-first.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probes", "spec.yaml", "store"]
    assert not any("report" in p.name for p in store.parent.iterdir())
    code, printed, err = relulab(capsys, "probe", str(spec), "--store", str(store), "--out", str(out), "--report")
    assert code == 0, err
    assert printed.strip().endswith(str(out / "report" / "report.html")) and (out / "report" / "report.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probes", "spec.yaml", "store"]
