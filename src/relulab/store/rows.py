"""Typed rows the store gives back where a table's row is more than numbers looked up by key: a configuration's
timing, and a search with its steps, candidates and correlations. Numbers are as stored, NULL -> NaN for the
measured ones; JSON columns come decoded (`options`, `off`, ...), never as their text.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class StoredTiming:
    """A configuration's timed pass alone on a device (a `timings` row; Store.save_timing's docstring)."""

    config_key: str
    device: str
    spec_json: str
    method: str
    steps: int
    warmup: int
    steps_per_epoch: int
    step_seconds: float
    eval_seconds: float
    epoch_seconds: float
    provenance: dict
    created: float


@dataclass(frozen=True)
class SearchStep:
    """One step of a search: the placement it started from and what it decided."""

    search_id: str
    step: int
    kind: str
    current: str
    decision: str
    chosen: Optional[str]
    note: Optional[str]


@dataclass(frozen=True)
class SearchCandidate:
    """A placement a step measured: accuracy over seeds with its 95% interval, the Welch comparison with the
    step's reference, the heuristic value that proposed it, and the runs behind it."""

    search_id: str
    step: int
    position: int
    placement: str
    off: list[int]
    slot: Optional[int]
    relu_count: Optional[int]
    seeds: Optional[int]
    runs: Optional[int]
    diverged: Optional[int]
    mean: float
    std: float
    ci_low: float
    ci_high: float
    reference: Optional[str]
    diff: float
    diff_low: float
    diff_high: float
    p: float
    verdict: Optional[str]
    heuristic: float
    accs: list[float]
    run_keys: list[str]


@dataclass(frozen=True)
class SearchCorrelation:
    """For a step's single-slot candidates: the rank correlation of a statistic with the measured change."""

    search_id: str
    step: int
    stat: str
    n: int
    spearman: float
    spearman_p: float
    kendall: float
    kendall_p: float
    highest_pick_diff: float
    lowest_pick_diff: float
    best_diff: float


@dataclass(frozen=True)
class StoredSearch:
    """A `relulab search` as the store holds it (status running until it finished)."""

    id: str
    experiment: str
    part: str
    base: str
    strategy: str
    options: Optional[dict]
    seeds: Optional[list[int]]
    epochs: int
    metric: str
    probe_set: str
    val_is_test: int
    spec: Optional[dict]
    slot_sizes: dict[int, int]
    status: str
    result: Optional[dict]
    created: float
    updated: float
    steps: list[SearchStep]
    candidates: list[SearchCandidate]
    correlations: list[SearchCorrelation]

    def as_dict(self) -> dict:
        """The search as plain dicts and lists (a copy): what a view of it (relulab.search's, with the numbers
        computed from its runs) extends."""
        return dataclasses.asdict(self)
