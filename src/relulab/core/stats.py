"""Statistics over seeds: mean, std, 95% interval, and Welch's test against a baseline.

    s = summarize([0.851, 0.848, 0.860])      # Summary(n=3, mean=0.853, std=0.0062, low=0.837, high=0.868)
    c = compare([0.80, 0.81, 0.79], [0.85, 0.86, 0.84])
    c.verdict                                 # 'distinguishable from seed noise (p = 0.0016)'

The interval is Student's t interval of the mean (the seeds are the sample). A
comparison is Welch's two-sample t-test (no equal-variance assumption), two-sided,
alpha 0.05, with the interval of the difference from the Welch-Satterthwaite degrees
of freedom, computed with the t distribution's functions scipy.stats itself uses (scipy.special's
stdtr, stdtrit). With a single seed there is no interval, and the
verdict says so instead of guessing.

Comparing many configurations with one baseline, one of them comes out "distinguishable"
by luck more often than alpha says; a report or `relulab compare` can adjust the p-values
of its comparisons at once (`CORRECTIONS`: Holm's, which bounds the chance of any false
positive, or Benjamini-Hochberg's, which bounds their expected share). None is applied
unless asked for.

`describe_runs` turns the runs of one configuration into the numbers every report
shows: diverged runs are counted, and left out of the accuracy statistics.

For the search's heuristic judgement: Spearman's rho and Kendall's tau-b of many
resamples at once (`spearman_rows`, `kendall_rows`, as scipy computes them), their
percentile interval, and Holm's adjustment of their p-values (`holm`, as above).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from relulab.core.errors import unknown_choice


def _scipy():
    """scipy.stats, imported at the first statistic rather than with this module: its import costs about half a
    second, which every `relulab` command paid at start (the CLI imports the report's formatters) though most
    compute no statistic."""
    from scipy import stats

    return stats


def _t_quantile(q: float, df: float) -> float:
    """Student's t quantile: what scipy.stats.t.ppf computes, through the same function (scipy.special.stdtrit).
    Intervals and Welch's test go through scipy.special rather than scipy.stats because its import takes about a
    quarter of the time (0.27 s against 1.0-1.2 s), which a `relulab run` of seed 001 spent for two functions."""
    from scipy.special import stdtrit

    return float(stdtrit(df, q))


def _t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p of a t statistic, 2 * scipy.stats.t.sf(|t|, df), through the same function (stdtr)."""
    from scipy.special import stdtr

    return float(2 * stdtr(df, -abs(t)))


ALPHA = 0.05  # two-sided: 95% intervals


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (n - 1); nan when n < 2
    low: Optional[float]  # 95% interval of the mean; None when n < 2
    high: Optional[float]

    @property
    def half_width(self) -> Optional[float]:
        return None if self.low is None else (self.high - self.low) / 2

    def format(self, scale: float = 1.0, digits: int = 2) -> str:
        """'85.12 ± 0.31' (the ± is the 95% interval's half-width); 'n=1' or '-' when there is none."""
        if self.n == 0:
            return "-"
        text = f"{self.mean * scale:.{digits}f}"
        if self.half_width is None:
            return f"{text} (n=1)"
        return f"{text} ± {self.half_width * scale:.{digits}f}"


def _finite(values: Sequence[float]) -> np.ndarray:
    return np.array([float(v) for v in values if v is not None and math.isfinite(v)], dtype=float)


def summarize(values: Sequence[float], alpha: float = ALPHA) -> Summary:
    """Mean, sample std and Student-t interval of the mean of the finite `values` (as scipy.stats.t.interval)."""
    xs = _finite(values)
    n = len(xs)
    if n == 0:
        return Summary(0, math.nan, math.nan, None, None)
    # A damaged store's numbers can be anything finite: past 1e154 a square is inf, which numpy gives quietly.
    with np.errstate(over="ignore", invalid="ignore"):
        mean = float(xs.mean())
        if n < 2:
            return Summary(1, mean, math.nan, None, None)
        std = float(xs.std(ddof=1))
        if std == 0:  # every seed gave the same number: the interval is that number (scipy's is NaN at scale 0)
            return Summary(n, mean, 0.0, mean, mean)
        half = _t_quantile(1 - alpha / 2, n - 1) * std / math.sqrt(n)  # as scipy.stats.t.interval
    return Summary(n, mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class Comparison:
    """A configuration against the baseline: difference of means (config - baseline)."""

    diff: float
    low: Optional[float]  # 95% interval of the difference (Welch)
    high: Optional[float]
    p: Optional[float]  # Welch's two-sided p-value
    n: int
    n_baseline: int
    distinguishable: Optional[bool]  # None: too few seeds to tell; judged on p_adjusted where there is one
    p_adjusted: Optional[float] = None  # p adjusted with the comparisons made beside it (with_correction)
    correction: Optional[str] = None  # the correction's name (CORRECTIONS), where p_adjusted is given

    @property
    def verdict(self) -> str:
        if self.distinguishable is None:
            return f"too few seeds to tell (n = {self.n} vs {self.n_baseline}; need 2 each)"
        judged = "distinguishable" if self.distinguishable else "not distinguishable"
        if self.correction is not None:
            return f"{judged} from seed noise ({CORRECTION_TITLES[self.correction]}-adjusted p = {self.p_adjusted:.2g})"
        return f"{judged} from seed noise (p = {self.p:.2g})"

    def format(self, scale: float = 1.0, digits: int = 2) -> str:
        """'+1.23 [0.40, 2.06]' (difference and its 95% interval) or '+1.23' without one."""
        text = f"{self.diff * scale:+.{digits}f}"
        if self.low is None:
            return text
        return f"{text} [{self.low * scale:+.{digits}f}, {self.high * scale:+.{digits}f}]"


def compare(values: Sequence[float], baseline: Sequence[float], alpha: float = ALPHA) -> Optional[Comparison]:
    """Welch's t-test of mean(values) - mean(baseline) (as scipy.stats.ttest_ind, equal_var=False), with the
    interval of the difference from the Welch-Satterthwaite degrees of freedom; None when either side has no
    finite value."""
    a, b = summarize(values, alpha), summarize(baseline, alpha)
    if a.n == 0 or b.n == 0:
        return None
    diff = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return Comparison(diff, None, None, None, a.n, b.n, None)
    if a.std == 0 and b.std == 0:  # every seed gave the same number on both sides: any difference is exact
        p = 1.0 if diff == 0 else 0.0
        return Comparison(diff, diff, diff, p, a.n, b.n, diff != 0)
    # scipy.stats.ttest_ind(equal_var=False) and its confidence_interval, computed as scipy computes them
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        var_a, var_b = a.std ** 2 / a.n, b.std ** 2 / b.n
        spread = math.sqrt(var_a + var_b)
        df = (var_a + var_b) ** 2 / (var_a ** 2 / (a.n - 1) + var_b ** 2 / (b.n - 1))  # Welch-Satterthwaite
        p = _t_two_sided_p(diff / spread, df)
        half = _t_quantile(1 - alpha / 2, df) * spread
    return Comparison(diff, diff - half, diff + half, p, a.n, b.n, p < alpha)


@dataclass
class RunNumbers:
    """What the statistics need from one stored run."""

    seed: int
    status: str  # done | diverged
    best_val_acc: float
    final_val_acc: float
    best_epoch: Optional[int]
    seconds: float
    epochs: int
    test_acc: Optional[float] = None
    diverged_at: Optional[int] = None


@dataclass
class ConfigStats:
    """One configuration over its seeds."""

    planned: int  # seeds in the plan
    done: int  # runs in the store (finished or diverged)
    diverged: int
    best_val_acc: Summary
    final_val_acc: Summary
    best_epoch: Summary
    seconds: Summary  # whole run, finished runs only
    seconds_per_epoch: Summary  # every run, diverged included
    test_acc: Summary
    vs_baseline: Optional[Comparison] = None  # on best validation accuracy
    vs_baseline_final: Optional[Comparison] = None  # on final validation accuracy


def describe_runs(runs: Sequence[RunNumbers], planned: int) -> ConfigStats:
    ok = [r for r in runs if r.status == "done"]
    return ConfigStats(
        planned=planned, done=len(runs), diverged=len(runs) - len(ok),
        best_val_acc=summarize([r.best_val_acc for r in ok]),
        final_val_acc=summarize([r.final_val_acc for r in ok]),
        best_epoch=summarize([r.best_epoch for r in ok if r.best_epoch is not None]),
        seconds=summarize([r.seconds for r in ok]),
        seconds_per_epoch=summarize([r.seconds / r.epochs for r in runs if r.epochs]),
        test_acc=summarize([r.test_acc for r in ok if r.test_acc is not None]),
    )


def with_baseline(config: ConfigStats, runs: Sequence[RunNumbers], baseline: Sequence[RunNumbers]) -> ConfigStats:
    """Fill in the comparisons of `runs` against the baseline's runs (finished runs only)."""
    ok = [r for r in runs if r.status == "done"]
    base = [r for r in baseline if r.status == "done"]
    config.vs_baseline = compare([r.best_val_acc for r in ok], [r.best_val_acc for r in base])
    config.vs_baseline_final = compare([r.final_val_acc for r in ok], [r.final_val_acc for r in base])
    return config


# ---------------------------------------------------------------- rank correlations, many rows at once
#
# The search's heuristic judgement bootstraps Spearman's rho and Kendall's tau over resampled slots and seeds:
# a thousand small correlations, computed here as array operations (one row per resample) rather than a
# thousand scipy calls.


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of x, y (shape (rows, n); ties get average ranks, as scipy's); NaN for a
    row where either side is constant."""
    rx, ry = _scipy().rankdata(x, axis=1), _scipy().rankdata(y, axis=1)
    rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    den = np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(1) / np.where(den > 0, den, 1), np.nan)


def kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair (shape (rows, n)), as scipy's kendalltau; NaN where either side is
    constant."""
    sx = np.sign(x[:, :, None] - x[:, None, :])
    sy = np.sign(y[:, :, None] - y[:, None, :])
    upper = np.triu(np.ones(x.shape[1], dtype=bool), 1)
    sx, sy = sx[:, upper], sy[:, upper]
    den = np.sqrt((sx * sx).sum(1) * (sy * sy).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (sx * sy).sum(1) / np.where(den > 0, den, 1), np.nan)


def percentile_interval(values: np.ndarray, alpha: float = ALPHA, least: float = 0.5
                        ) -> tuple[Optional[float], Optional[float]]:
    """The (alpha/2, 1 - alpha/2) percentiles of the finite `values`; (None, None) when fewer than `least` of
    them are finite (a correlation undefined in most resamples has no interval worth showing)."""
    finite = values[np.isfinite(values)]
    if not len(values) or len(finite) < least * len(values):
        return None, None
    low, high = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def _given(pvalues: Sequence[Optional[float]]) -> list[tuple[int, float]]:
    return [(i, float(p)) for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]


def holm(pvalues: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Holm's step-down adjustment of the p-values that are given (None and NaN stay None): controls the chance
    that any of them is significant by luck alone (the family-wise error), like Bonferroni but less strict."""
    given = _given(pvalues)
    adjusted: list[Optional[float]] = [None] * len(pvalues)
    running = 0.0
    for rank, (i, p) in enumerate(sorted(given, key=lambda ip: ip[1])):
        running = max(running, min(1.0, (len(given) - rank) * p))
        adjusted[i] = running
    return adjusted


def benjamini_hochberg(pvalues: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Benjamini and Hochberg's adjustment of the p-values that are given (scipy.stats.false_discovery_control;
    None and NaN stay None): controls the expected share of false discoveries among those called significant,
    which keeps more of them than Holm's."""
    given = _given(pvalues)
    adjusted: list[Optional[float]] = [None] * len(pvalues)
    if given:
        for (i, _), q in zip(given, _scipy().false_discovery_control([p for _, p in given], method="bh")):
            adjusted[i] = float(q)
    return adjusted


# The corrections for comparing many configurations with one baseline, by the name a report or `relulab compare`
# is given (`none`: the p-values as they are, the default).
CORRECTIONS = {"holm": holm, "bh": benjamini_hochberg}
CORRECTION_NAMES = ("none", *CORRECTIONS)
CORRECTION_TITLES = {"holm": "Holm", "bh": "Benjamini-Hochberg"}


def check_correction(name: Optional[str], field: str) -> Optional[str]:
    """The correction called `name` (None for none); an unknown name is a UserError naming `field`."""
    if name is None or name == "none":
        return None
    if name not in CORRECTIONS:
        raise unknown_choice(field, name, CORRECTION_NAMES)
    return name


def with_correction(comparisons: Sequence[Optional[Comparison]], name: Optional[str], alpha: float = ALPHA
                    ) -> list[Optional[Comparison]]:
    """The comparisons made at once (many configurations with one baseline), each with its p-value adjusted by
    the correction `name` (CORRECTIONS) and judged on it; as they are for None, and where a comparison has no
    p-value (too few seeds)."""
    if name is None:
        return list(comparisons)
    adjusted = CORRECTIONS[name]([None if c is None else c.p for c in comparisons])
    return [c if c is None or q is None else
            dataclasses.replace(c, p_adjusted=q, correction=name, distinguishable=q < alpha)
            for c, q in zip(comparisons, adjusted)]


def chance_of_a_false_positive(m: int, alpha: float = ALPHA) -> float:
    """The chance that at least one of m independent tests is significant at alpha when nothing is there."""
    return 1 - (1 - alpha) ** m
