"""Statistics over seeds, checked against numpy and scipy."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from relulab.core.stats import RunNumbers, compare, describe_runs, summarize, with_baseline


def test_summary_matches_numpy_and_scipy():
    xs = [0.851, 0.848, 0.860, 0.839, 0.855]
    s = summarize(xs)
    low, high = sps.t.interval(0.95, len(xs) - 1, loc=np.mean(xs), scale=sps.sem(xs))
    assert s.n == 5 and s.mean == pytest.approx(np.mean(xs)) and s.std == pytest.approx(np.std(xs, ddof=1))
    assert (s.low, s.high) == (pytest.approx(low), pytest.approx(high))
    assert s.format(100) == f"{np.mean(xs) * 100:.2f} ± {(high - low) / 2 * 100:.2f}"


def test_one_seed_has_no_interval_and_says_so():
    s = summarize([0.5])
    assert s.n == 1 and s.low is None and math.isnan(s.std)
    assert s.format(100) == "50.00 (n=1)"
    assert summarize([]).format() == "-"
    assert summarize([float("nan"), 0.2, float("inf")]).n == 1  # non-finite values are not numbers of a seed


def test_welch_matches_scipy():
    a, b = [0.80, 0.81, 0.79, 0.82], [0.85, 0.86, 0.84]
    c = compare(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert c.p == pytest.approx(ref.pvalue)
    assert c.diff == pytest.approx(np.mean(a) - np.mean(b))
    # The interval is the Welch one: it excludes 0 exactly when p < 0.05.
    assert c.low < c.diff < c.high < 0
    assert c.distinguishable and c.verdict.startswith("distinguishable from seed noise (p = ")
    if hasattr(ref, "confidence_interval"):
        lo, hi = ref.confidence_interval(0.95)
        assert (c.low, c.high) == (pytest.approx(lo), pytest.approx(hi))


def test_noise_is_not_distinguishable():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.85, 0.01, 5), rng.normal(0.851, 0.01, 5)
    c = compare(a, b)
    assert c.low < 0 < c.high and not c.distinguishable
    assert c.verdict.startswith("not distinguishable from seed noise")


def test_too_few_seeds_and_exact_ties():
    assert compare([0.9], [0.8, 0.81]).distinguishable is None
    assert "too few seeds" in compare([0.9], [0.8, 0.81]).verdict
    assert compare([0.9, 0.9], [0.9, 0.9]).distinguishable is False
    assert compare([0.9, 0.9], [0.8, 0.8]).distinguishable is True
    assert compare([], [0.8]) is None


def _run(seed, acc, status="done", seconds=10.0, epochs=5):
    return RunNumbers(seed, status, acc, acc - 0.01, 4, seconds, epochs, None, 3 if status == "diverged" else None)


def test_diverged_runs_are_counted_and_left_out_of_accuracy():
    runs = [_run(0, 0.9), _run(1, 0.92), _run(2, float("nan"), "diverged", seconds=6.0, epochs=3)]
    s = describe_runs(runs, planned=4)
    assert (s.planned, s.done, s.diverged) == (4, 3, 1)
    assert s.best_val_acc.n == 2 and s.best_val_acc.mean == pytest.approx(0.91)
    assert s.seconds.n == 2  # whole-run time of finished runs only
    assert s.seconds_per_epoch.n == 3 and s.seconds_per_epoch.mean == pytest.approx((2 + 2 + 2) / 3)
    with_baseline(s, runs, [_run(0, 0.8), _run(1, 0.81)])
    assert s.vs_baseline.diff == pytest.approx(0.91 - 0.805)
