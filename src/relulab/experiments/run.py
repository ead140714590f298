"""Running an experiment: every (configuration, seed) of it that the store does not hold yet, then what is
computed once per experiment (its analyses, each packed configuration timed alone).

    exp = load_experiment("quickstart", Overrides(seeds=[0, 1]))
    summary = run_experiment(exp)          # re-run after any interruption: finished runs are skipped

Every dataset is loaded and every model built once before the store is touched (`prepare`). The runs train
through the sweep driver (relulab.experiments.sweep: claimed, trained through an executor, recorded as each
finishes); where they train is the executor's business (relulab.experiments.executors: in this process
through `packing.pack.train_many`, or on a Ray cluster), and each run's weights are kept beside the store
(relulab.store.weights; the spec's `keep_weights`).
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from relulab.core.env import device_name, provenance
from relulab.core.errors import UserError
from relulab.data import Splits, data_key, load_data
from relulab.experiments.analyses import ANALYSES
from relulab.experiments.executors import Executor, InProcessExecutor
from relulab.experiments.plan import Experiment, Part, PlannedRun, config_json
from relulab.experiments.sweep import Sweep, SweepRun, run_line, sweeping
from relulab.experiments.tracking import Trackers
from relulab.packing.pack import time_alone
from relulab.store import Store, timing_key
from relulab.training.resume import discard_finished
from relulab.training.specs import Job
from relulab.zoo.activations import canonical_name as canonical_activation
from relulab.zoo.models import KEEP, check_model

def prepare(exp: Experiment) -> dict[str, Splits]:
    """Load every dataset the experiment uses and build every model once, so that a bad
    dataset or shape fails here, before the store is touched. Returns the splits by data key."""
    splits: dict[str, Splits] = {}
    built: set[str] = set()
    for part in exp.parts:
        for v in part.variants:
            key = data_key(v.spec.data)
            if key not in splits:
                splits[key] = load_data(v.spec.data)
            signature = key + json.dumps(v.spec.model.to_dict(), sort_keys=True, default=str)
            if signature in built:
                continue
            try:
                check_model(v.spec.model, splits[key].input_shape, splits[key].num_classes)
            except UserError as e:
                where = f"parts.{part.name}." if len(exp.parts) > 1 or part.name != exp.name else ""
                raise UserError(f"{where}configs.{v.config}: {e}") from None
            built.add(signature)
    return splits


@dataclass
class SweepSummary:
    store: Path
    planned: int = 0  # distinct runs in the plan
    already_done: int = 0
    trained: int = 0
    diverged: int = 0
    finished_elsewhere: int = 0  # a stale claim's owner came back and finished first


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def analysis_key(experiment: str, part: str, name: str, options: dict) -> str:
    """The store key of one analysis result of one part."""
    text = json.dumps([experiment, part, name, options], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def used_activations(part: Part) -> list[str]:
    """Every activation some slot of the part uses, in order of first appearance."""
    names: list[str] = []
    for v in part.variants:
        for act in [v.spec.model.activation, *v.spec.model.slots.values()]:
            if act == KEEP:  # a model by reference's own activations: what they are, its slots say
                continue
            name = canonical_activation(act)
            if name not in names:
                names.append(name)
    return names


def run_analyses(exp: Experiment, store: Store, device: torch.device, echo: Callable[[str], None]) -> None:
    for part in exp.parts:
        for name, options in part.analyses.items():
            analysis = ANALYSES[name]
            key = analysis_key(exp.name, part.name, name, options)
            kept = store.artifact(key) if analysis.measured else None
            value = kept["value"] if kept else analysis.compute(options, used_activations(part), device)
            if not kept:
                store.save_artifact(key, exp.name, part.name, name, value, provenance(device))
            if value.get("lines"):
                echo(f"{part.name} / {name}:" + ("" if not kept else " (measured before, kept in the store)"))
                for line in value["lines"]:
                    echo(f"  {line}")


def run_experiment(exp: Experiment, log: Callable[[str], None] = _log, echo: Callable[[str], None] = print,
                   claim_size: Optional[int] = None, poll_s: float = 2.0,
                   executor: Optional[Executor] = None, trackers: Optional[Trackers] = None) -> SweepSummary:
    """Run every (configuration, seed) of `exp` that the store does not hold yet; results are committed as
    each run finishes. Safe to interrupt at any point and to run from several processes at once.

    `executor` says where runs train (relulab.experiments.executors): in this process (the default) or on a Ray
    cluster; either way this process alone writes the store, and logs each run to `trackers` (TensorBoard, MLflow:
    relulab.experiments.trackers) as it is recorded. `claim_size`: run keys claimed at a time
    (default: the executor's choice, 64 in process, all for Ray)."""
    executor = executor if executor is not None else InProcessExecutor()
    splits_by_data = prepare(exp)
    try:
        where = executor.open(exp.device, splits_by_data)  # may refuse (no GPU, no cluster): nothing written yet
        classes = {key: s.classes for key, s in splits_by_data.items()}
        timing_data = splits_by_data if exp.pack and exp.time_alone else {}  # for time_packed_configs
        del splits_by_data
        device = executor.driver_device
        planned = _unique(exp.planned())
        summary = SweepSummary(exp.store, planned=len(planned))
        claim = claim_size if claim_size is not None else executor.claim_size
        with sweeping(exp, executor, classes, log, pack=exp.pack, resume=exp.resume, claim_size=claim,
                      poll_s=poll_s, trackers=trackers) as (store, sweep):
            store.save_plan(exp.name, exp.origin, exp.raw, [p.meta() for p in exp.parts], exp.plan_rows(),
                            exp.run_overrides)
            run_analyses(exp, store, device, echo)
            # Decoding the stored runs now, not after the first lines of output, makes a damaged value in one
            # (JSON that no longer parses) the command's one line of error rather than its last.
            summary.already_done = len(store.runs(p.key for p in planned))
            log(f"{exp.name}: {len(planned)} runs ({summary.already_done} already in {exp.store}), {where}")
            groups = _by_data(planned).values() if executor.one_dataset_at_a_time else [planned]
            for group in groups:
                _sweep_group(sweep, exp, group, summary, log)
            time_packed_configs(exp, store, device, timing_data, log)
            if exp.resume is not None:  # states of packs that formed otherwise, or that another process finished
                discard_finished(Path(exp.resume.folder), store.done_keys)
    finally:
        executor.close()
    return summary


def time_packed_configs(exp: Experiment, store: Store, device: torch.device, splits_by_data: dict[str, Splits],
                        log: Callable[[str], None]) -> None:
    """Each configuration's own time per epoch, beside its packed share: where the sweep trained a configuration's
    runs packed on this process's device, one model of it is timed alone (packing.time_alone) and kept in the
    store's `timings` table, once per configuration and device. Runs that trained alone timed themselves, and
    runs trained on another device (a Ray worker's) cannot be timed from here."""
    if not (exp.pack and exp.time_alone):
        return
    where = device_name(device)
    on_device: tuple[str, Optional[Splits]] = ("", None)
    for spec_json, p in _packed_untimed(exp, store, where).items():
        key = data_key(p.variant.spec.data)
        if on_device[0] != key:  # one dataset on the device at a time
            on_device = ("", None)
            on_device = (key, splits_by_data[key].to(device))
        timing = time_alone(p.variant.spec, on_device[1], device, p.seed)
        store.save_timing({"config_key": timing_key(spec_json), "device": where, "spec_json": spec_json,
                           "method": TIMING_METHOD, **asdict(timing), "epoch_seconds": timing.epoch_seconds,
                           "provenance": provenance(device)})
        log(f"{p.part.name}/{p.variant.name} timed alone: {timing.epoch_seconds:.3g} s/epoch ({timing.steps} "
            f"steps and a validation pass on {where}; its packed runs' seconds are shares of a joint time)")


TIMING_METHOD = "packing.time_alone: one model alone, as train_many trains a lone run"


def _packed_untimed(exp: Experiment, store: Store, where: str) -> dict[str, PlannedRun]:
    """{configuration (config_json): a planned run of it} for the configurations with a run that trained packed
    on the device `where`, and no timing of theirs on it in the store yet."""
    planned = _unique(exp.planned())
    stored = store.runs(p.key for p in planned)
    packed: dict[str, PlannedRun] = {}
    for p in planned:
        row = stored.get(p.key)
        if row is not None and row["device"] == where and row["data"].get("trained_with", 1) > 1:
            packed.setdefault(config_json(p.variant.spec), p)
    timed = store.timings([timing_key(spec_json) for spec_json in packed])
    return {spec_json: p for spec_json, p in packed.items() if (timing_key(spec_json), where) not in timed}


def _unique(planned: list[PlannedRun]) -> list[PlannedRun]:
    seen, out = set(), []
    for p in planned:  # two variants may resolve to the same run: train it once
        if p.key not in seen:
            seen.add(p.key)
            out.append(p)
    return out


def _by_data(planned: list[PlannedRun]) -> dict[str, list[PlannedRun]]:
    groups: dict[str, list[PlannedRun]] = {}
    for p in planned:
        groups.setdefault(data_key(p.variant.spec.data), []).append(p)
    return groups


def _sweep_group(sweep: Sweep, exp: Experiment, group: list[PlannedRun], summary: SweepSummary, log) -> None:
    """The planned runs of `group` through the driver, counted and logged as each is recorded."""
    by_key = {p.key: p for p in group}
    runs = [SweepRun(Job(p.variant.spec, p.seed, p.key), exp.name, p.part.name, p.variant.name,
                     (tuple(p.part.probes), p.part.probe_size) if p.part.probes else None) for p in group]
    for done in sweep.run(runs):
        p = by_key[done.run.key]
        _count(summary, done.result, done.stored)
        head = f"[{summary.already_done + summary.trained}/{summary.planned}] {p.part.name}/{p.variant.name} " \
               f"seed {p.seed}"
        log(run_line(head, done.result, done.stored))


def _count(summary: SweepSummary, result, stored: bool) -> None:
    if not stored:
        summary.finished_elsewhere += 1
        return
    summary.trained += 1
    summary.diverged += result.history.diverged_at is not None
