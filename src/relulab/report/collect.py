"""The report's data: a store's experiment read into typed records (`collect`), with the statistics over seeds.

`ExperimentData` holds the plan's parts; each `PartData` its configurations (`VariantData`: the stored runs,
their epochs and per-epoch probe statistics, the timed pass alone), its analyses, final-model probe rows and
searches. Everything else in the report is drawn from these.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from relulab.core.errors import UserError
from relulab.core.stats import (ConfigStats, RunNumbers, check_correction, describe_runs, with_baseline,
                                with_correction)
from relulab.probes.statistics import stored_slot_names
from relulab.probes.watch import WATCHED
from relulab.store import Store, StoredTiming, retrained_key, timing_key


@dataclass
class VariantData:
    name: str
    config: str
    grid: dict
    baseline: Optional[str]
    seeds: list[int]
    runs: list[dict]  # store rows, in seed order
    epochs: dict[str, list[dict]]  # run key -> epoch rows
    slot_stats: dict[str, dict]  # run key -> {stat: {epoch: {slot: value}}}
    stats: Optional[ConfigStats] = None
    alone: Optional[StoredTiming] = None  # the configuration's timed pass alone on its runs' device

    @property
    def slot_names(self) -> dict[int, str]:
        """{slot: name} of the configuration's model, as its runs stored them; {} where its slots have numbers only
        (relulab's seed models)."""
        return runs_slot_names(self.runs)

    def numbers(self) -> list[RunNumbers]:
        return [RunNumbers(r["seed"], r["status"], number_or_nan(r["best_val_acc"]), number_or_nan(r["final_val_acc"]),
                           r["best_epoch"], r["seconds"], r["epochs"], r["test_acc"], r["diverged_at"])
                for r in self.runs]


@dataclass
class PartData:
    name: str
    description: str
    val_is_test: bool
    baseline: Optional[str]
    variants: list[VariantData]
    analyses: dict[str, dict]  # name -> stored artifact {"value", "provenance"}
    searches: list[dict] = field(default_factory=list)  # issue 4: relulab search results (Store.searches)
    run_probes: dict[str, list[dict]] = field(default_factory=dict)  # issue 4: variant -> final-model probe rows
    # issue 19: (variant, stored run row, row of its copy retrained for probing) where the probe rows are a copy's
    retrained: list[tuple[str, dict, dict]] = field(default_factory=list)

    @property
    def slot_names(self) -> dict[int, str]:
        """{slot: name} for tables and figures of the whole part: the names its configurations' models agree on
        (a part whose configurations are different models, with other slots, shows numbers)."""
        named = [v.slot_names for v in self.variants if v.slot_names]
        return named[0] if named and all(n == named[0] for n in named) else {}

    @property
    def watched(self) -> bool:
        """Whether the part's runs are models watched in their own training loop (relulab.watch): no epochs of
        relulab's, and their per-epoch statistics are by training step, on the step's training batch."""
        runs = [r for v in self.variants for r in v.runs]
        return bool(runs) and all(WATCHED in r["data"] for r in runs)


@dataclass
class ExperimentData:
    name: str
    origin: str
    spec: dict
    overrides: dict  # command-line fields applied to every run
    store: Path
    parts: list[PartData]
    planned: int
    done: int
    correction: Optional[str] = None  # the comparisons' p-values adjusted together (core.stats.CORRECTIONS)

    @property
    def val_is_test_parts(self) -> list[str]:
        return [p.name for p in self.parts if p.val_is_test]


def number_or_nan(value) -> float:
    return math.nan if value is None else value


def collect(store: Store, name: str, correction: Optional[str] = None) -> ExperimentData:
    """Experiment `name` of the store, with its statistics; with `correction` (holm, bh) the comparisons of each part
    with its baseline are adjusted together, metric by metric."""
    from relulab.experiments.run import analysis_key

    correction = check_correction(correction, "report.correction")

    exp = store.load_experiment(name)
    keys = [row["run_key"] for row in exp["plan"]]
    runs, epochs, slots = store.runs(keys), store.epochs(keys), store.slot_stats(keys)
    parts = []
    for meta in exp["parts"]:
        rows = [r for r in exp["plan"] if r["part"] == meta["name"]]
        variants = []
        for v in meta["variants"]:
            mine = [r for r in rows if r["variant"] == v["name"]]
            done = [runs[r["run_key"]] for r in mine if r["run_key"] in runs]
            variants.append(VariantData(v["name"], v["config"], v["grid"], mine[0]["baseline"] if mine else None,
                                        [r["seed"] for r in mine], done,
                                        {r["key"]: epochs.get(r["key"], []) for r in done},
                                        {r["key"]: slots.get(r["key"], {}) for r in done}))
        found = {n: store.artifact(analysis_key(name, meta["name"], n, o)) for n, o in meta["analyses"].items()}
        # A single-part spec's description is the experiment's: say it once.
        description = "" if meta["description"] == str(exp["spec"].get("description") or "").strip() \
            else meta["description"]
        parts.append(PartData(meta["name"], description, meta["val_is_test"], meta["baseline"], variants,
                              {n: a for n, a in found.items() if a is not None}))
    attach_probes_and_searches(store, name, parts)  # issue 4
    attach_timings(store, exp["plan"], parts)
    _fill_stats(parts, correction)
    return ExperimentData(name, exp["origin"], exp["spec"], exp["overrides"], store.path, parts, len(set(keys)),
                          len(set(keys) & set(runs)), correction)


def attach_timings(store: Store, plan: list[dict], parts: list[PartData]) -> None:
    """Each variant's timed pass alone (relulab.experiments.time_packed_configs), on the device most of its runs
    trained on: a timing from another device would not compare with them."""
    spec_of = {(r["part"], r["variant"]): r["spec_json"] for r in plan}
    keys = {pv: timing_key(spec_json) for pv, spec_json in spec_of.items()}
    timings = store.timings(set(keys.values()))
    for part in parts:
        for v in part.variants:
            devices = Counter(r["device"] for r in v.runs)
            if devices and (part.name, v.name) in keys:
                v.alone = timings.get((keys[(part.name, v.name)], devices.most_common(1)[0][0]))


def _fill_stats(parts: list[PartData], correction: Optional[str]) -> None:
    for part in parts:
        by_name = {v.name: v for v in part.variants}
        for v in part.variants:
            v.stats = describe_runs(v.numbers(), len(v.seeds))
            if v.baseline and v.baseline in by_name:
                with_baseline(v.stats, v.numbers(), by_name[v.baseline].numbers())
        _correct(part, correction)


def _correct(part: PartData, correction: Optional[str]) -> None:
    """A part's comparisons with the baseline are made together: adjust them together, one metric at a time."""
    compared = [v.stats for v in part.variants]  # the baseline's own have none, and are left out
    for metric in ("vs_baseline", "vs_baseline_final"):
        adjusted = with_correction([getattr(s, metric) for s in compared], correction)
        for stats, comparison in zip(compared, adjusted):
            setattr(stats, metric, comparison)


def attach_probes_and_searches(store: Store, name: str, parts: list[PartData]) -> None:
    from relulab.search.judgement import load_search_views

    searches = load_search_views(store, name)  # with test accuracies and judgements from the stored runs
    for part in parts:
        part.searches = [s for s in searches if s["part"] == part.name]
        for v in part.variants:
            final = {r["key"]: r["epochs"] for r in v.runs}  # the final model only (relulab probe --epoch may
            rows = [r for r in store.run_probes(list(final)) if r["epoch"] == final[r["run_key"]]]  # add more)
            rows += _retrained_probes(store, part, v, {r["run_key"] for r in rows})
            if rows:
                part.run_probes[v.name] = rows


def _retrained_probes(store: Store, part: PartData, v: VariantData, probed: set[str]) -> list[dict]:
    """The final-model probe rows of the copies retrained for probing of `v`'s runs that have none of their
    own; each copy is noted in `part.retrained`, so that the report shows its accuracy beside the stored run's."""
    unprobed = {retrained_key(r["key"]): r for r in v.runs if r["key"] not in probed}
    copies = store.runs(unprobed)
    rows = [r for r in store.run_probes(list(copies)) if r["epoch"] == copies[r["run_key"]]["epochs"]]
    for key in sorted({r["run_key"] for r in rows}, key=lambda k: unprobed[k]["seed"]):
        part.retrained.append((v.name, unprobed[key], copies[key]))
    return rows


def runs_slot_names(runs: list[dict]) -> dict[int, str]:
    """The slot names stored with `runs` (relulab.probes.statistics.SLOT_NAMES in each run's data summary); {}
    where they have none, or where runs of one configuration disagree."""
    named = [n for n in (stored_slot_names(r.get("data")) for r in runs) if n]
    return named[0] if named and all(n == named[0] for n in named) else {}


def trained_packed(run: dict) -> bool:
    return run["data"].get("trained_with", 1) > 1


def pick_experiment(store: Store, name: Optional[str]) -> str:
    if name is not None:
        return name
    names = store.experiment_names()
    if not names:
        raise UserError(f"store: {store.path} holds no experiment yet")
    if len(names) > 1:
        raise UserError(f"report.experiment: {store.path} holds several experiments ({', '.join(names)}); name one")
    return names[0]
