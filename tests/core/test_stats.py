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


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scipy's own, for the samples without spread
def test_intervals_and_welch_equal_scipy_stats_over_many_samples():
    """summarize and compare go through scipy.special's t functions (a quarter of scipy.stats' import time): the
    same numbers as scipy.stats' t.interval, ttest_ind(equal_var=False) and its confidence interval."""
    rng = np.random.default_rng(1)
    for trial in range(200):
        a = rng.normal(0.8, rng.uniform(0.001, 0.1), rng.integers(2, 9))
        b = rng.normal(0.8, rng.uniform(0.001, 0.1), rng.integers(2, 9))
        if trial % 10 == 0:
            b = np.full(len(b), 0.8)  # one side without spread
        s = summarize(a)
        low, high = sps.t.interval(0.95, len(a) - 1, loc=np.mean(a), scale=sps.sem(a))
        assert (s.low, s.high) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))
        c, ref = compare(a, b), sps.ttest_ind(a, b, equal_var=False)
        lo, hi = ref.confidence_interval(0.95)
        assert (c.p, c.low, c.high) == (pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300), pytest.approx(lo, rel=1e-9),
                                        pytest.approx(hi, rel=1e-9))


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


# ---------------------------------------------------------------- the numbers through scipy equal the earlier ones
#
# These values came from the pre-scipy implementation of summarize and compare (the Welch statistic, its
# Welch-Satterthwaite degrees of freedom and interval computed by hand; commit c1ed512), printed with repr
# before core/stats.py went through scipy.stats.ttest_ind: the report's numbers must not move.

PRE_SCIPY_SUMMARIES = [
    ([0.851, 0.848, 0.860, 0.839, 0.855], (5, 0.8506, 0.007893034904268454, 0.8407995027228042, 0.8604004972771958)),
    ([0.91, 0.93], (2, 0.92, 0.014142135623730963, 0.792937952638253, 1.0470620473617471)),
    ([0.9, 0.9, 0.9], (3, 0.9, 0.0, 0.9, 0.9)),
]
PRE_SCIPY_COMPARISONS = [  # (values, baseline) -> (diff, low, high, p, distinguishable)
    (([0.80, 0.81, 0.79, 0.82], [0.85, 0.86, 0.84]),
     (-0.04499999999999993, -0.06731711481338779, -0.022682885186612073, 0.0035620633854220518, True)),
    (([0.851, 0.848, 0.860, 0.839, 0.855], [0.853, 0.850, 0.849, 0.861, 0.844]),
     (-0.0007999999999999119, -0.01128839807484905, 0.009688398074849227, 0.8637704896910408, False)),
    (([0.5, 0.7], [0.52, 0.9, 0.31]),
     (0.023333333333333317, -0.6227003963477149, 0.6693670630143815, 0.914502892803906, False)),
    (([0.9, 0.9], [0.8, 0.8]), (0.09999999999999998, 0.09999999999999998, 0.09999999999999998, 0.0, True)),
    (([0.9, 0.9], [0.9, 0.9]), (0.0, 0.0, 0.0, 1.0, False)),
    (([0.1, 0.2, 0.3], [0.2, 0.2, 0.2]), (0.0, -0.24841377117503297, 0.24841377117503297, 1.0, False)),
]


@pytest.mark.parametrize("values, expected", PRE_SCIPY_SUMMARIES)
def test_summaries_equal_the_pre_scipy_numbers(values, expected):
    s = summarize(values)
    assert (s.n, s.mean, s.std, s.low, s.high) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("pair, expected", PRE_SCIPY_COMPARISONS)
def test_comparisons_equal_the_pre_scipy_numbers(pair, expected):
    c = compare(*pair)
    assert (c.diff, c.low, c.high, c.p) == pytest.approx(expected[:4], rel=1e-12, abs=1e-15)
    assert c.distinguishable is expected[4]


# ---------------------------------------------------------------- corrections for many comparisons with one baseline

def test_holm_and_benjamini_hochberg_against_hand_worked_values():
    from relulab.core.stats import benjamini_hochberg, holm

    # p sorted: 0.005, 0.01, 0.03, 0.04 (m = 4). Holm: 4 x 0.005 = 0.02, 3 x 0.01 = 0.03, 2 x 0.03 = 0.06,
    # 1 x 0.04 = 0.04 -> 0.06 (never below an earlier one). BH: 4/1 x 0.005 = 0.02, 4/2 x 0.01 = 0.02,
    # 4/3 x 0.03 = 0.04, 4/4 x 0.04 = 0.04, each the least of those from it upward. None and NaN are no test.
    ps = [0.01, None, 0.04, float("nan"), 0.03, 0.005]
    assert holm(ps) == pytest.approx([0.03, None, 0.06, None, 0.06, 0.02])
    assert benjamini_hochberg(ps) == pytest.approx([0.02, None, 0.04, None, 0.04, 0.02])
    # capped at 1; BH's step-up lets the smaller p take the larger one's 0.6
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert benjamini_hochberg([0.5, 0.6]) == pytest.approx([0.6, 0.6])
    assert holm([]) == [] and benjamini_hochberg([None]) == [None]


def test_a_correction_judges_the_comparisons_on_their_adjusted_p():
    from relulab.core.errors import UserError
    from relulab.core.stats import check_correction, with_correction

    # raw p 0.0036 (distinguishable), 0.86 and 0.91 (not), and one with too few seeds
    pairs = [pair for pair, _ in PRE_SCIPY_COMPARISONS[:3]] + [([0.9], [0.8, 0.81])]
    raw = [compare(*pair) for pair in pairs]
    holm = with_correction(raw, "holm")
    assert holm[0].p_adjusted == pytest.approx(3 * raw[0].p) and holm[0].distinguishable
    assert holm[0].verdict == f"distinguishable from seed noise (Holm-adjusted p = {3 * raw[0].p:.2g})"
    assert holm[1].p_adjusted == pytest.approx(min(1, max(3 * raw[0].p, 2 * raw[1].p)))
    assert holm[3] == raw[3] and holm[3].distinguishable is None  # nothing to adjust
    bh = with_correction(raw, "bh")
    assert bh[2].p_adjusted == pytest.approx(raw[2].p) and "Benjamini-Hochberg-adjusted p" in bh[2].verdict
    assert with_correction(raw, None) == raw and raw[0].p_adjusted is None
    # Seven comparisons at p = 0.038 each: Holm's bounds the chance of any false positive, so none is left
    # (7 x 0.038); BH's bounds their expected share, and seven alike at 0.038 are most likely all real (7/7 x p).
    many = [compare([0.0, 1.0, 2.0], [2.5, 3.5, 4.5])] * 7
    assert all(c.p == pytest.approx(0.0376, abs=1e-4) and c.distinguishable for c in many)
    assert not any(c.distinguishable for c in with_correction(many, "holm"))
    assert all(c.distinguishable and c.p_adjusted == pytest.approx(c.p) for c in with_correction(many, "bh"))
    assert check_correction("none", "report.correction") is None and check_correction("bh", "x") == "bh"
    with pytest.raises(UserError, match=r"report.correction: unknown value 'hom' \(did you mean 'holm'\?\)"):
        check_correction("hom", "report.correction")
