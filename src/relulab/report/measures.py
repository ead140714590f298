"""Numbers the report derives from its data for tables and figures: curves over seeds, seconds per epoch
packed and alone, sparsity and post-activation mean and variance by slot, per-epoch statistic curves,
final-model probe means, and the slots a by-slot table shows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from relulab.core.errors import unknown_choice
from relulab.core.stats import summarize
from relulab.report.collect import PartData, VariantData, trained_packed


# ---------------------------------------------------------------- bands over seeds
#
# What a figure's band (or whisker) around a mean over seeds is. The default is the tables' 95% interval, from the
# same function (relulab.core.stats.summarize), so a band and the "± half-width" beside it say the same thing.

@dataclass(frozen=True)
class Band:
    name: str
    text: str  # what the band is, in a caption or a figure's subtitle
    bounds: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # (runs, points) -> (low, high) per point


def _interval_bounds(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tables' 95% interval of the mean of each column (NaN with fewer than 2 finite values: no band)."""
    summaries = [summarize(table[:, j].tolist()) for j in range(table.shape[1])]
    return (np.array([np.nan if s.low is None else s.low for s in summaries]),
            np.array([np.nan if s.high is None else s.high for s in summaries]))


def _range_bounds(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not table.shape[0]:
        return np.full(table.shape[1], np.nan), np.full(table.shape[1], np.nan)
    finite = np.ma.masked_invalid(table)
    return finite.min(0).filled(np.nan).astype(float), finite.max(0).filled(np.nan).astype(float)


BANDS: dict[str, Band] = {b.name: b for b in [
    Band("ci95", "95% interval of the mean over seeds (Student t, as in the tables)", _interval_bounds),
    Band("minmax", "range over seeds (min to max)", _range_bounds),
]}
DEFAULT_BAND = "ci95"


def band_named(name: str, field: str = "band") -> Band:
    if name not in BANDS:
        raise unknown_choice(field, name, BANDS)
    return BANDS[name]


def seeds_text(counts: list[int]) -> str:
    """'3 seeds', '2-3 seeds per configuration' or 'no runs': how many runs each line of a figure averages."""
    counts = [n for n in counts if n]
    if not counts:
        return "no runs"
    low, high = min(counts), max(counts)
    n = str(low) if low == high else f"{low}-{high}"
    return f"{n} seed{'s' if high > 1 else ''}" + ("" if low == high else " per configuration")


def band_text(band: Band, counts: list[int]) -> str:
    """A figure's subtitle: how many seeds, and what its band is (none with a single seed for the interval)."""
    if counts and max(counts) < 2:
        return f"{seeds_text(counts)}: no band"
    return f"{seeds_text(counts)}; band: {band.text}"


def curve(v: VariantData, metric: str, band: Band = BANDS[DEFAULT_BAND]
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, mean, low, high) of `metric` over the variant's runs; low and high: the band over seeds."""
    # Columns are the epoch numbers the store holds (not 1..N): a run cut short, or a store whose numbers were
    # damaged, still draws what it has.
    numbers = sorted({row["epoch"] for rows in v.epochs.values() for row in rows})
    column = {epoch: i for i, epoch in enumerate(numbers)}
    table = np.full((len(v.epochs), len(numbers)), np.nan)
    for i, rows in enumerate(v.epochs.values()):
        for row in rows:
            value = row[metric]
            table[i, column[row["epoch"]]] = value if value is not None and math.isfinite(value) else np.nan
    keep = ~np.all(np.isnan(table), axis=0) if numbers else np.zeros(0, dtype=bool)
    epochs = np.asarray(numbers, dtype=np.int64)[keep]
    table = table[:, keep]
    if table.size == 0:
        return epochs, np.zeros(0), np.zeros(0), np.zeros(0)
    low, high = band.bounds(table)
    return epochs, np.nanmean(table, 0), low, high


def sparsity_by_slot(v: VariantData, stat: str = "sparsity") -> dict[int, float]:
    """Mean over the variant's runs of `stat` at each run's last probed epoch, per slot."""
    per_slot: dict[int, list[float]] = {}
    for stats in v.slot_stats.values():
        by_epoch = stats.get(stat)
        if not by_epoch:
            continue
        for slot, value in by_epoch[max(by_epoch)].items():
            per_slot.setdefault(slot, []).append(value)
    return {slot: float(np.nanmean(vals)) for slot, vals in sorted(per_slot.items())}


def mean_seconds_per_epoch(runs: list[dict]) -> Optional[float]:
    per_run = [r["seconds"] / r["epochs"] for r in runs if r["epochs"]]
    return float(np.mean(per_run)) if per_run else None


def alone_seconds_per_epoch(v: VariantData) -> Optional[float]:
    """A configuration's own seconds per epoch: its timed pass, else its runs that trained alone."""
    if v.alone:
        return v.alone.epoch_seconds
    return mean_seconds_per_epoch([r for r in v.runs if not trained_packed(r)])


def packed_runs(part: PartData) -> int:
    """How many of the part's runs were trained together with others (relulab.packing.pack)."""
    return sum(trained_packed(r) for v in part.variants for r in v.runs)


# ---------------------------------------------------------------- through depth (seed 002's premise)
#
# SELU's claim (Klambauer et al. 2017): with LeCun init and standardised inputs, every layer's output keeps mean 0
# and variance 1. The probes `mean_out` and `std_out` measure each slot's output over the probe set; the figure
# draws them (variance = std squared) by depth, before training (epoch 0) and after the last epoch, against
# that target.

DEPTH_TARGET = {"mean": 0.0, "variance": 1.0}
MAX_TABLE_SLOTS = 12  # slots a by-slot table shows before it shows a representative selection


# The probes run the model in eval mode, as it is evaluated; what that means for batch norm must be said beside
# the numbers, or "with batch norm, at initialisation" reads as something it is not.
DEPTH_EVAL_NOTE = ("Measured in eval mode: batch norm applies its running statistics, which before training are "
                   "mean 0 and variance 1 (it passes its input through), so at epoch 0 a model with batch norm "
                   "measures like the same weights without it; after training they are the running averages "
                   "(Keras' momentum 0.99 is slow to settle).")


@dataclass
class DepthProfile:
    """One statistic of one configuration at one epoch, by slot: mean over seeds and the band over seeds."""

    slots: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]

    def at(self, slot: int) -> float:
        return self.mean[self.slots.index(slot)] if slot in self.slots else math.nan


def _depth_values(v: VariantData, epoch_of: Callable[[dict], Optional[int]]) -> dict[str, dict[int, list[float]]]:
    """{"mean" | "variance": {slot: one value per run}} at the epoch `epoch_of` picks from each run's epochs."""
    out: dict[str, dict[int, list[float]]] = {"mean": {}, "variance": {}}
    for stats in v.slot_stats.values():
        means, stds = stats.get("mean_out") or {}, stats.get("std_out") or {}
        epoch = epoch_of(means)
        if epoch is None or epoch not in stds:
            continue
        for slot, value in means[epoch].items():
            out["mean"].setdefault(slot, []).append(value)
        for slot, value in stds[epoch].items():
            out["variance"].setdefault(slot, []).append(value * value if value is not None else math.nan)
    return out


def _profile(by_slot: dict[int, list[float]], band: Band) -> Optional[DepthProfile]:
    slots, mean, low, high = [], [], [], []
    for slot, values in sorted(by_slot.items()):
        finite = np.array([[x] for x in values if x is not None and math.isfinite(x)], dtype=float).reshape(-1, 1)
        slots.append(slot)
        mean.append(float(np.mean(finite)) if finite.size else math.nan)
        bounds = band.bounds(finite)
        low.append(float(bounds[0][0]))
        high.append(float(bounds[1][0]))
    return DepthProfile(slots, mean, low, high) if slots else None


def depth_profiles(v: VariantData, band: Band = BANDS[DEFAULT_BAND]) -> dict[str, dict[str, DepthProfile]]:
    """{"init" | "trained": {"mean" | "variance": profile}} of a configuration's slot outputs; "init" is epoch 0
    (before training; absent from stores written before it was measured), "trained" each run's last epoch."""
    pick = {"init": lambda by_epoch: 0 if 0 in by_epoch else None,
            "trained": lambda by_epoch: max((e for e in by_epoch if e > 0), default=None)}
    out = {}
    for when, epoch_of in pick.items():
        profiles = {what: _profile(values, band) for what, values in _depth_values(v, epoch_of).items()}
        if all(profiles.values()):
            out[when] = profiles
    return out


def last_probed_epoch(part: PartData) -> Optional[int]:
    epochs = {e for v in part.variants for stats in v.slot_stats.values() for e in (stats.get("mean_out") or {})}
    return max((e for e in epochs if e > 0), default=None)


def representative_slots(slots: list[int], most: int = MAX_TABLE_SLOTS) -> list[int]:
    """Every slot when there are few; else the first, the last and every multiple of a round step between."""
    slots = sorted(slots)
    if len(slots) <= most:
        return slots
    for step in (2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000):
        picks = sorted({slots[0], slots[-1], *(s for s in slots if s % step == 0)})
        if len(picks) <= most:
            return picks
    return sorted({slots[0], slots[-1]})


# ---------------------------------------------------------------- probe statistics

def epoch_stat_curves(v: VariantData, stat: str) -> dict[int, tuple[list[int], list[float]]]:
    """slot -> (epochs, mean over the variant's runs) of one per-epoch statistic."""
    table: dict[int, dict[int, list[float]]] = {}
    for stats in v.slot_stats.values():
        for epoch, by_slot in (stats.get(stat) or {}).items():
            for slot, value in by_slot.items():
                table.setdefault(slot, {}).setdefault(epoch, []).append(value)
    out = {}
    for slot, by_epoch in sorted(table.items()):
        epochs = sorted(by_epoch)
        out[slot] = (epochs, [float(np.nanmean(by_epoch[e])) if any(np.isfinite(by_epoch[e])) else math.nan
                              for e in epochs])
    return out


def has_data(curves: dict[int, tuple[list, list]]) -> bool:
    """Whether any slot's curve has a finite value (saturation is NaN at every slot of a ReLU model)."""
    return any(math.isfinite(y) for _, values in curves.values() for y in values)


def probe_means(rows: list[dict], probe_set: str) -> tuple[dict, dict, list[str], int, dict[int, int]]:
    """From run_probes rows of several runs (seeds), each at its last probed epoch on `probe_set`:
    ({stat: {slot: mean over runs}}, {stat: {slot: {class: mean}}}, class names, runs, {class (-1: all): the
    fewest images it had in any run})."""
    rows = [r for r in rows if r["probe_set"] == probe_set]
    last: dict[str, int] = {}
    for r in rows:
        last[r["run_key"]] = max(last.get(r["run_key"], 0), r["epoch"])
    overall: dict = {}
    per_class: dict = {}
    classes: dict[int, str] = {}
    images: dict[int, int] = {}
    for r in rows:
        if r["epoch"] != last[r["run_key"]]:
            continue
        images[r["class"]] = min(images.get(r["class"], r["images"]), r["images"])
        if r["class"] < 0:
            overall.setdefault(r["stat"], {}).setdefault(r["slot"], []).append(r["value"])
        else:
            classes[r["class"]] = r["class_name"]
            per_class.setdefault(r["stat"], {}).setdefault(r["slot"], {}).setdefault(r["class"], []).append(
                r["value"])

    def mean(values):
        finite = [x for x in values if math.isfinite(x)]
        return float(np.mean(finite)) if finite else math.nan

    return ({s: {k: mean(v) for k, v in by.items()} for s, by in overall.items()},
            {s: {k: {c: mean(v) for c, v in byc.items()} for k, byc in by.items()} for s, by in per_class.items()},
            [classes[c] for c in sorted(classes)], len(last), images)


def step_candidates(s: dict, step: int) -> list[dict]:
    return [c for c in s["candidates"] if c["step"] == step]
