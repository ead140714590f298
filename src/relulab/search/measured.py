"""A placement as measured: the metric of its runs over the seeds and their probe statistics, from the store.

A placement is a set of a configuration's active slots switched off; `Measured` is what a strategy decides
on and what the judgement (relulab.search.judgement) correlates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from relulab.core.stats import summarize
from relulab.store import Store


@dataclass
class Measured:
    """One placement over the seeds."""

    off: frozenset
    label: str
    keys: list[str]
    accs: list[float]  # the metric of each finished (not diverged) run
    diverged: int
    relu_count: int
    heuristics: dict[str, dict[int, float]] = field(default_factory=dict)  # stat -> slot -> mean over seeds
    # The same per seed (in the order of `keys`; NaN where a run is missing, diverged or unprobed): what the
    # judgement's bootstrap resamples.
    seed_accs: list[float] = field(default_factory=list)
    seed_heuristics: dict[str, dict[int, list[float]]] = field(default_factory=dict)

    @property
    def summary(self):
        return summarize(self.accs)

    @property
    def mean(self) -> float:
        return self.summary.mean if self.accs else math.nan



def _finite_mean(values: Iterable[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def stored_heuristics(store: Store, keys: list[str], probe_set: str) -> dict[str, dict[int, list[float]]]:
    """stat -> slot -> the all-images value at each run's last probed epoch, one value per key in the order of
    `keys` (NaN for a run without probes)."""
    column = {key: i for i, key in enumerate(keys)}
    # A run's own statistics, or those of its copy retrained for probing (row["of"]: the run it stands in for).
    rows = [r for r in store.probes_or_copies(keys, probe_set) if r["class"] == -1]
    last: dict[str, int] = {}
    for r in rows:
        last[r["run_key"]] = max(last.get(r["run_key"], 0), r["epoch"])
    out: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        if r["epoch"] == last[r["run_key"]]:
            out.setdefault(r["stat"], {}).setdefault(r["slot"], [math.nan] * len(keys))[column[r["of"]]] = \
                r["value"]
    return out


def stored_measurement(store: Store, off: Iterable[int], label: str, keys: list[str], metric: str, probe_set: str,
                       relu_count: int) -> Measured:
    """A placement as the store has it: the metric of its runs (`keys`, one per seed) and their probe
    statistics, averaged over the seeds and kept per seed."""
    runs = store.runs(keys)
    accs, seed_accs, diverged = [], [], 0
    for key in keys:
        row = runs.get(key)
        value = math.nan
        if row is not None and row["status"] != "done":
            diverged += 1
        elif row is not None and row[metric] is not None and math.isfinite(row[metric]):
            value = row[metric]
            accs.append(value)
        seed_accs.append(value)
    per_seed = stored_heuristics(store, keys, probe_set)
    heuristics = {stat: {slot: _finite_mean(values) for slot, values in by_slot.items()}
                  for stat, by_slot in per_seed.items()}
    return Measured(frozenset(off), label, list(keys), accs, diverged, relu_count, heuristics, seed_accs, per_seed)
