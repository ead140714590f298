"""The heuristic judgement: does a probe statistic of a model rank its slots the way switching each off
changes the accuracy? (relulab.search.strategies' docstring says where searches store and show it.)

For a model and some of its single-slot changes (switch one more slot off): Spearman's rho and Kendall's tau-b
over the slots, with scipy's p-values, bootstrap 95% intervals, and Holm-adjusted p-values over the ~15
statistics judged at once. `load_search_views` is a stored search as reports and the command show it: with
every candidate's held-out (test) accuracy and the judgement of every model that allows one.
"""
from __future__ import annotations

import itertools
import math
import warnings
from typing import Optional

import numpy as np

from relulab.core.stats import (Summary, chance_of_a_false_positive, holm, kendall_rows, percentile_interval,
                                spearman_rows, summarize)
from relulab.probes import statistics as probes_mod
from relulab.search.measured import Measured, stored_measurement
from relulab.store import Store

# ---------------------------------------------------------------- the heuristic judgement
#
# For a model and some of its single-slot changes (switch one more slot off), does a probe statistic of the model
# rank the slots the way the measured changes in accuracy do? Spearman's rho and Kendall's tau-b over the slots,
# with scipy's p-values. Over few slots and seeds a correlation is noisy, so each gets a bootstrap interval:
# resample the slots (with replacement) and, within each resample, the seeds (the same seeds for the model and
# its changes, so their pairing is kept), and recompute the correlation from the resampled means. And since the
# ~15 statistics are judged at once, some will look significant by luck alone: Holm-adjusted p-values go beside
# the raw ones.

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0  # fixed: a report shows the same intervals every time it is built
MIN_JUDGED = 3  # single-slot changes a model needs before a rank correlation says anything


def judge(current: Measured, singles: dict[int, Measured], resamples: int = 0,
          seed: int = BOOTSTRAP_SEED) -> list[dict]:
    """For every statistic of `current`, its rank correlation (over the slots of `singles`) with the measured
    change in accuracy of switching that slot off, the changes the highest-first and lowest-first picks got and
    the best change there was, and chance's: `random_diff`, the mean change over the slots (what switching off
    a slot chosen at random gets, on average); with `resamples`, bootstrap 95% intervals of both correlations
    and of each pick's lead over chance (`highest_vs_random_low/high`, `lowest_vs_random_low/high`).
    Holm-adjusted p-values over the statistics judged (`compared` of them) are always given."""
    from scipy import stats as sps

    diffs = {slot: m.mean - current.mean for slot, m in singles.items()}
    out = []
    for stat in probes_mod.stat_names():
        values = current.heuristics.get(stat)
        if not values:
            continue
        slots = sorted(s for s, d in diffs.items() if math.isfinite(values.get(s, math.nan)) and math.isfinite(d))
        pairs = [(values[s], diffs[s]) for s in slots]
        row = {"stat": stat, "n": len(pairs), "spearman": None, "spearman_p": None, "kendall": None,
               "kendall_p": None, "highest_pick_diff": None, "lowest_pick_diff": None,
               "best_diff": max((d for _, d in pairs), default=None), "spearman_low": None, "spearman_high": None,
               "kendall_low": None, "kendall_high": None, "resamples": 0, "random_diff": None,
               **{f"{pick}_vs_random_{end}": None for pick in ("highest", "lowest") for end in ("low", "high")}}
        if pairs:
            row["highest_pick_diff"] = max(pairs, key=lambda p: p[0])[1]
            row["lowest_pick_diff"] = min(pairs, key=lambda p: p[0])[1]
            row["random_diff"] = math.fsum(d for _, d in pairs) / len(pairs)  # fsum: the same in any slot order
        xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
        if len(pairs) >= 3 and len(set(xs)) > 1 and len(set(ys)) > 1:
            rho, rho_p = sps.spearmanr(xs, ys)
            tau, tau_p = sps.kendalltau(xs, ys)
            row.update(spearman=float(rho), spearman_p=float(rho_p), kendall=float(tau), kendall_p=float(tau_p))
            if resamples:
                row.update(_bootstrap(current, singles, stat, slots, resamples, seed))
        out.append(row)
    return _with_holm(out)


def _with_holm(rows: list[dict]) -> list[dict]:
    for name in ("spearman_p", "kendall_p"):
        for row, adjusted in zip(rows, holm([r[name] for r in rows])):
            row[f"{name}_holm"] = adjusted
    compared = sum(r["spearman_p"] is not None for r in rows)
    for row in rows:
        row["compared"] = compared
    return rows


def _bootstrap(current: Measured, singles: dict[int, Measured], stat: str, slots: list[int], resamples: int,
               seed: int) -> dict:
    """Percentile intervals of rho and tau, and of each pick's lead over a random pick, over `resamples`
    resamples of (slots, then seeds)."""
    by_slot = current.seed_heuristics.get(stat, {})
    seeds = len(current.seed_accs)
    if not seeds or any(len(by_slot.get(s, ())) != seeds or len(singles[s].seed_accs) != seeds for s in slots):
        return {}  # no per-seed numbers (a Measured built by hand): no interval
    h = np.array([by_slot[s] for s in slots], dtype=float)  # (slots, seeds): the statistic on the current model
    a = np.array([singles[s].seed_accs for s in slots], dtype=float)  # the accuracy with that slot off
    c = np.array(current.seed_accs, dtype=float)  # the current model's accuracy
    rng = np.random.default_rng(seed)
    pick_slots = rng.integers(0, len(slots), (resamples, len(slots)))[:, :, None]
    pick_seeds = rng.integers(0, seeds, (resamples, seeds))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample of only missing seeds: NaN, dropped below
        x = np.nanmean(h[pick_slots, pick_seeds[:, None, :]], axis=2)
        y = np.nanmean(a[pick_slots, pick_seeds[:, None, :]], axis=2) - np.nanmean(c[pick_seeds], axis=1)[:, None]
    valid = np.isfinite(x).all(1) & np.isfinite(y).all(1)
    x, y = np.where(valid[:, None], x, 0.0), np.where(valid[:, None], y, 0.0)
    rho = np.where(valid, spearman_rows(x, y), np.nan)
    tau = np.where(valid, kendall_rows(x, y), np.nan)
    (rho_low, rho_high), (tau_low, tau_high) = percentile_interval(rho), percentile_interval(tau)
    rows, chance = np.arange(len(x)), y.mean(1)  # chance: a slot drawn at random gets the mean change
    leads = {pick: np.where(valid, y[rows, where(x, 1)] - chance, np.nan)
             for pick, where in (("highest", np.argmax), ("lowest", np.argmin))}
    out = {"spearman_low": rho_low, "spearman_high": rho_high, "kendall_low": tau_low, "kendall_high": tau_high,
           "resamples": resamples}
    for pick, lead in leads.items():
        out[f"{pick}_vs_random_low"], out[f"{pick}_vs_random_high"] = percentile_interval(lead)
    return out


def judgement_groups(s: dict) -> list[tuple[int, dict, dict[int, dict]]]:
    """(step, the current model's candidate row, {slot: the row with that slot switched off too}) for every
    model of a stored search that had at least MIN_JUDGED of its single-slot changes measured: an oracle step,
    exhaustive's first level, greedy's proposals from one current model (rejected and accepted, over the
    consecutive steps that started from it; `step` is the last of them), budget's placements with one slot off
    (choose exhaustive, n - 1 kept)."""
    groups = []
    for label, steps in itertools.groupby(s["steps"], key=lambda st: st["current"]):
        numbers = {st["step"] for st in steps}
        rows = [c for c in s["candidates"] if c["step"] in numbers]
        current = next((c for c in rows if c["placement"] == label), None)
        if current is None:
            continue
        off = set(current["off"])
        singles: dict[int, dict] = {}
        for c in rows:
            extra = set(c["off"]) - off
            if len(extra) == 1 and len(c["off"]) == len(off) + 1:
                singles.setdefault(extra.pop(), c)
        if len(singles) >= MIN_JUDGED:
            groups.append((max(numbers), current, singles))
    return groups


def judge_stored(store: Store, s: dict, resamples: int = BOOTSTRAP_RESAMPLES) -> list[dict]:
    """The judgement of every model of a stored search that allows one (`judgement_groups`), from its stored runs
    and probes, by the same `judge` as the oracle's steps; rows carry their `step` and `current`."""
    def measured(c: dict) -> Measured:
        return stored_measurement(store, c["off"], c["placement"], c["run_keys"], s["metric"], s["probe_set"],
                                  c["relu_count"])

    out = []
    for step, current, singles in judgement_groups(s):
        rows = judge(measured(current), {slot: measured(c) for slot, c in singles.items()}, resamples)
        out += [{**r, "step": step, "current": current["placement"]} for r in rows]
    return out


def held_out_accuracy(runs: dict[str, dict], keys: list[str]) -> Summary:
    """Mean test accuracy of the finished runs `keys` with its 95% interval over seeds: the held-out number
    beside the validation accuracy that chose a placement."""
    return summarize([runs[k]["test_acc"] for k in keys if k in runs and runs[k]["status"] == "done"
                      and runs[k]["test_acc"] is not None])


def load_search_views(store: Store, experiment: Optional[str] = None) -> list[dict]:
    """`Store.searches`, with what is computed from the stored runs when a search is shown: every
    candidate's test accuracy (`test_mean`, `test_ci_low`, `test_ci_high`, `test_n`) and the heuristic
    judgements of every step that allows one (`judgements`, rows as `judge_stored` gives them), and the names of
    the model's slots where it has them (`slot_names`: {slot: name}, as its runs stored them; {} for relulab's
    seed models)."""
    searches = [s.as_dict() for s in store.searches(experiment)]
    runs = store.runs(sorted({k for s in searches for c in s["candidates"] for k in c["run_keys"]}))
    for s in searches:
        for c in s["candidates"]:
            t = held_out_accuracy(runs, c["run_keys"])
            c.update(test_mean=t.mean, test_ci_low=t.low, test_ci_high=t.high, test_n=t.n)
        s["judgements"] = judge_stored(store, s)
        keys = [k for c in s["candidates"] for k in c["run_keys"] if k in runs]
        s["slot_names"] = next((n for n in (probes_mod.stored_slot_names(runs[k]["data"]) for k in keys) if n), {})
    return searches


def false_positive_note(compared: int, alpha: float = 0.05) -> str:
    """What comparing many statistics at once means for their p-values (the judgement tables' note)."""
    if compared < 2:
        return ""
    return (f"{compared} statistics are compared at once: even if none is related to the change in accuracy, the "
            f"chance that at least one looks significant at p < {alpha:g} by luck alone is 1 - {1 - alpha:g}^"
            f"{compared} = {chance_of_a_false_positive(compared, alpha) * 100:.0f}%; the Holm columns adjust the "
            "p-values for that.")
