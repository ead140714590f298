"""Live tracking: every run the sweep driver records, handed to trackers (TensorBoard, MLflow) at once.

    from relulab.experiments.trackers import open_trackers   # the trackers by name (TRACKERS)
    with open_trackers({"tensorboard": "tb", "mlflow": "sqlite:///mlflow.db"}) as trackers:   # closed however it ends
        run_experiment(exp, trackers=trackers)       # each run logged as it is recorded, not after the sweep

Runs reach the driver (relulab.experiments.sweep) whole, as each finishes: a pack of models trains together and a
Ray worker sends its runs back when its task is done, so the driver's "a run was recorded" is the one place that
sees every run, whichever executor trained it. There each run goes to the trackers: `run_started`, then
`epoch_done` for each of its epochs (losses, accuracies, the learning rate, the slot statistics probed that
epoch), then `run_done` with its final metrics and weights. The report's TensorBoard export replays stored runs
through the same calls (`log_run` of `stored_epochs`), so live logs and exported ones are the same files.

A tracker that fails mid-sweep (a full disk, a tracking server gone) is dropped with one line on the log: the
store still holds every run, and `relulab report --tensorboard` writes them again.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from relulab.training.loop import epoch_batches
from relulab.training.schedules import ScheduleSpec, Timeline, factor
from relulab.training.specs import History, RunResult
from relulab.zoo.optim import OptimizerSpec

EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "seconds")
FINAL_METRICS = ("best_val_acc", "final_val_acc", "test_acc", "best_epoch", "seconds", "diverged_at", "epochs")


@dataclass(frozen=True)
class TrackedRun:
    """One run as trackers see it: where the store files it, its spec (RunSpec.to_dict()) and data summary."""

    key: str
    experiment: str
    part: str
    config: str  # the configuration's name (the plan's variant)
    seed: int
    spec: dict
    data: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.part}/{self.config}/seed {self.seed}"


@dataclass(frozen=True)
class EpochDone:
    """One epoch of a run: its record, the learning rate of its last step (None: not known) and the slot
    statistics probed after it ({stat: {slot: value}}; empty where the run was not probed)."""

    epoch: int
    metrics: dict  # EPOCH_METRICS -> value
    lr: Optional[float] = None
    slot_stats: dict = field(default_factory=dict)


class Tracker:
    """Where runs are logged as they are recorded. Override what you need; `name` is the registry's."""

    name = ""

    def run_started(self, run: TrackedRun) -> None: ...

    def epoch_done(self, run: TrackedRun, epoch: EpochDone) -> None: ...

    def run_done(self, run: TrackedRun, metrics: dict, weights: Optional[dict]) -> None:
        """`metrics`: FINAL_METRICS (History.summary() and the last epoch's number, `epochs`); `weights`: the final
        state dict, where known."""

    def report_written(self, folder: Path, experiment: str) -> None:
        """The experiment's report was written to `folder`."""

    def close(self, finished: bool = True) -> None:
        """No more runs; `finished` False: the sweep ended with an error (or Ctrl-C)."""


def flatten(mapping: dict, prefix: str = "") -> dict:
    """A nested spec as {dotted.field: value}: lists as JSON text, None kept (each tracker decides)."""
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple, dict)):
            flat[name] = json.dumps(value, default=str)
        else:
            flat[name] = value
    return flat


def epoch_lr(spec: dict, epoch: int, train_size: Optional[int]) -> Optional[float]:
    """The learning rate of epoch `epoch`'s last optimizer step, from the run's spec (the optimizer's rate times
    its schedule's factor: relulab.training.schedules); None without the training set's size."""
    train = spec.get("train") or {}
    if not isinstance(train_size, int) or train_size < 1 or "batch_size" not in train:
        return None
    lr = OptimizerSpec(**train.get("optimizer", {})).resolved_lr()
    if not train.get("schedule"):
        return lr
    steps = len(epoch_batches(train_size, train["batch_size"]))
    at = Timeline(epoch * steps - 1, steps, steps * train["epochs"])
    return lr * factor(ScheduleSpec(**train["schedule"]), at)


def result_epochs(run: TrackedRun, history: History, slot_stats: dict) -> list[EpochDone]:
    """A trained run's epochs (`slot_stats`: the probe's {epoch: {stat: {slot: value}}})."""
    return _with_initial(slot_stats, [
        EpochDone(e.epoch, {m: getattr(e, m) for m in EPOCH_METRICS}, epoch_lr(run.spec, e.epoch, run.data.get("train")),
                  slot_stats.get(e.epoch, {})) for e in history.epochs])


def stored_epochs(run: TrackedRun, rows: list[dict], slot_stats: dict) -> list[EpochDone]:
    """A stored run's epochs: the store's epoch rows, and its slot statistics ({stat: {epoch: {slot: value}}})."""
    by_epoch: dict[int, dict] = {}
    for stat, epochs in slot_stats.items():
        for epoch, by_slot in epochs.items():
            by_epoch.setdefault(epoch, {})[stat] = by_slot
    return _with_initial(by_epoch, [
        EpochDone(r["epoch"], {m: r[m] for m in EPOCH_METRICS}, epoch_lr(run.spec, r["epoch"], run.data.get("train")),
                  by_epoch.get(r["epoch"], {})) for r in rows])


def _with_initial(slot_stats: dict, epochs: list[EpochDone]) -> list[EpochDone]:
    """`epochs`, after an epoch 0 of the statistics of the model as initialised where the probe measured them."""
    return ([EpochDone(0, {}, None, slot_stats[0])] if slot_stats.get(0) else []) + epochs


def log_run(tracker: Tracker, run: TrackedRun, epochs: Sequence[EpochDone], metrics: dict,
            weights: Optional[dict] = None) -> None:
    """One run through one tracker, in the calls' order."""
    tracker.run_started(run)
    for epoch in epochs:
        tracker.epoch_done(run, epoch)
    tracker.run_done(run, metrics, weights)


def finite(value) -> bool:
    """A number a tracker can plot (not None, not NaN or inf, not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Trackers:
    """The trackers of one command, as the driver calls them: each run to all, a failing tracker dropped."""

    def __init__(self, trackers: Sequence[Tracker] = (), log: Callable[[str], None] = stderr_line):
        self.trackers, self.log = list(trackers), log

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def log_result(self, run: TrackedRun, result: RunResult, slot_stats: dict, weights: Optional[dict]) -> None:
        """A run the driver has just recorded."""
        h = result.history
        epochs = result_epochs(run, h, slot_stats)
        metrics = {**h.summary(), "epochs": h.epochs[-1].epoch if h.epochs else 0}
        self._each(lambda t: log_run(t, run, epochs, metrics, weights))

    def report_written(self, folder: Path, experiment: str) -> None:
        self._each(lambda t: t.report_written(folder, experiment))

    def _each(self, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as e:  # noqa: BLE001 - the store holds the runs; a log elsewhere must not end a sweep
                self.trackers.remove(tracker)
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                self.log(f"warning: {tracker.name} logging stopped: {type(e).__name__}: {first}")
                _close_quietly(tracker, False)

    def close(self, finished: bool = True) -> None:
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close(finished)

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(finished=kind is None)


def _close_quietly(tracker: Tracker, finished: bool) -> None:
    try:
        tracker.close(finished)
    except Exception:  # noqa: BLE001 - already failed once: its first error is the one said
        pass
