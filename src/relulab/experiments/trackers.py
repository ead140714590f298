"""The trackers by name (`TRACKERS`): TensorBoard event files and MLflow runs, each an optional extra.

    trackers = open_trackers({"tensorboard": "tb", "mlflow": "sqlite:///mlflow.db"}, log)

`open_trackers` makes each named tracker, checking its package and destination first (a UserError before
anything trains: an hour of training must not end in "tensorboard is not installed"). What each logs of a run
is in its class's docstring; the calls are relulab.experiments.tracking's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from relulab.core.errors import UserError, unknown_choice
from relulab.core.util import check_output_dir
from relulab.experiments.tracking import (FINAL_METRICS, EpochDone, TrackedRun, Tracker, Trackers, finite, flatten,
                                          stderr_line)

# ---------------------------------------------------------------- TensorBoard


def require_tensorboard(field: str = "tracking.tensorboard"):
    """TensorBoard's SummaryWriter, or a UserError naming `field` and how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(f"{field}: the tensorboard package is not installed; pip install relulab[tensorboard]") \
            from None
    return SummaryWriter


def run_hparams(run: TrackedRun) -> dict:
    """A run's hyperparameters: which run it is, its seed and every field of its spec (flattened)."""
    return {"experiment": run.experiment, "part": run.part, "config": run.config, "seed": run.seed,
            **flatten(run.spec)}


class TensorBoardTracker(Tracker):
    """One TensorBoard run (folder PART/CONFIG/seedN under the log folder, one event file) per relulab run: each
    epoch's losses, accuracies, seconds and learning rate as scalars; each probed statistic per slot as scalars
    (STAT/slotNN) and across the slots as a histogram (STAT/slots); the final weights as histograms
    (weights/NAME); and the run's hyperparameters with its final metrics (hparams/...) for the HParams plugin.
    Writing a run again replaces its folder's event files."""

    name = "tensorboard"

    def __init__(self, logdir: Path, field: str = "tracking.tensorboard"):
        self.SummaryWriter = require_tensorboard(field)
        self.logdir = check_output_dir(logdir, field)
        self.writers: dict[str, object] = {}

    def folder(self, run: TrackedRun) -> Path:
        return self.logdir / run.part / run.config / f"seed{run.seed}"

    def run_started(self, run):
        folder = self.folder(run)
        for old in folder.glob("events.out.tfevents.*"):  # an earlier log of this run: no duplicates
            old.unlink()
        self.writers[run.key] = self.SummaryWriter(str(folder))

    def epoch_done(self, run, epoch: EpochDone):
        writer = self.writers[run.key]
        for metric, value in [*epoch.metrics.items(), ("lr", epoch.lr)]:
            if finite(value):
                writer.add_scalar(metric, value, epoch.epoch)
        for stat, by_slot in epoch.slot_stats.items():
            for slot, value in sorted(by_slot.items()):
                if finite(value):
                    writer.add_scalar(f"{stat}/slot{slot:02d}", value, epoch.epoch)
            values = [v for v in by_slot.values() if finite(v)]
            if values:
                writer.add_histogram(f"{stat}/slots", _array(values), epoch.epoch)

    def run_done(self, run, metrics, weights):
        from torch.utils.tensorboard.summary import hparams

        writer = self.writers.pop(run.key)
        last = metrics.get("epochs") or 0
        for name, tensor in (weights or {}).items():
            if tensor.is_floating_point() and tensor.numel():
                writer.add_histogram(f"weights/{name}", tensor.detach().float().cpu(), last)
        final = {f"hparams/{m}": float(metrics[m]) for m in FINAL_METRICS if finite(metrics.get(m))}
        params = {k: v for k, v in run_hparams(run).items() if v is not None}
        for summary in hparams(params, final):  # as SummaryWriter.add_hparams, but in the run's own event file
            writer.file_writer.add_summary(summary)
        for name, value in final.items():
            writer.add_scalar(name, value, last)
        writer.close()  # flushed: the run's file is whole as soon as it is recorded

    def close(self, finished=True):
        writers, self.writers = self.writers, {}
        for writer in writers.values():
            writer.close()


def _array(values: list[float]):
    import numpy as np

    return np.asarray(values, dtype=np.float64)


# ---------------------------------------------------------------- MLflow

MLFLOW_HINT = "pip install relulab[mlflow]"
MLFLOW_BATCH = {"params": 100, "metrics": 1000}  # MLflow's log_batch limits
MLFLOW_VALUE_CHARS = 6000  # MLflow's longest param value
MLFLOW_FINAL_NAMES = {"seconds": "run_seconds"}  # a final metric whose name a per-epoch one has: renamed


def require_mlflow(field: str = "tracking.mlflow"):
    """The MlflowClient class, or a UserError naming `field` and how to install it."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UserError(f"{field}: the mlflow package is not installed; {MLFLOW_HINT}") from None
    return MlflowClient


class MlflowTracker(Tracker):
    """Each relulab run as an MLflow run in the MLflow experiment of the relulab experiment's name, a child of
    one run per command (the sweep's, named EXPERIMENT sweep): params are the run's seed and its spec's fields
    (flattened: train.optimizer.lr), metrics each epoch's (step = epoch; the slot statistics as STAT/slotNN) and
    the final ones (the run's total seconds as run_seconds: `seconds` is each epoch's), tags the experiment, part, configuration, seed and run key (relulab.*). A report written
    after the sweep is logged as the sweep run's artifact `report/`. A new experiment on an sqlite: store keeps
    its artifacts in mlartifacts/ beside the database file (MLflow's own default is the working folder's)."""

    name = "mlflow"

    def __init__(self, uri: str, field: str = "tracking.mlflow"):
        MlflowClient = require_mlflow(field)
        self.uri, self.field = uri, field
        try:
            self.client = MlflowClient(tracking_uri=uri)
            self.client.search_experiments(max_results=1)  # reached and readable: say so before training
        except Exception as e:  # noqa: BLE001 - MLflow's errors for a bad URI have no common type
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"{field}: cannot use the MLflow tracking store {uri}: {first}") from None
        self.experiments: dict[str, str] = {}  # relulab experiment -> MLflow experiment id
        self.sweeps: dict[str, str] = {}  # relulab experiment -> this command's sweep run id
        self.runs: dict[str, str] = {}  # run key -> MLflow run id, while it is logged

    def _experiment_id(self, name: str) -> str:
        if name not in self.experiments:
            found = self.client.get_experiment_by_name(name)
            self.experiments[name] = found.experiment_id if found else \
                self.client.create_experiment(name, artifact_location=_artifact_location(self.uri))
        return self.experiments[name]

    def _sweep(self, experiment: str) -> str:
        if experiment not in self.sweeps:
            run = self.client.create_run(self._experiment_id(experiment), run_name=f"{experiment} sweep",
                                         tags={"relulab.experiment": experiment, "relulab.role": "sweep"})
            self.sweeps[experiment] = run.info.run_id
        return self.sweeps[experiment]

    def run_started(self, run):
        from mlflow.entities import Param

        tags = {"mlflow.parentRunId": self._sweep(run.experiment), "relulab.experiment": run.experiment,
                "relulab.part": run.part, "relulab.config": run.config, "relulab.seed": str(run.seed),
                "relulab.run_key": run.key}
        run_id = self.client.create_run(self._experiment_id(run.experiment), run_name=run.name, tags=tags).info.run_id
        self.runs[run.key] = run_id
        params = [Param(k, _param_text(v)) for k, v in {"seed": run.seed, **flatten(run.spec)}.items()]
        self._batches(run_id, params=params)

    def epoch_done(self, run, epoch: EpochDone):
        values = {**epoch.metrics, "lr": epoch.lr}
        for stat, by_slot in epoch.slot_stats.items():
            values.update({f"{stat}/slot{slot:02d}": v for slot, v in by_slot.items()})
        self._metrics(self.runs[run.key], values, epoch.epoch)

    def run_done(self, run, metrics, weights):
        run_id = self.runs.pop(run.key)
        self._metrics(run_id, {MLFLOW_FINAL_NAMES.get(m, m): metrics.get(m) for m in FINAL_METRICS},
                      metrics.get("epochs") or 0)
        self.client.set_terminated(run_id, "FINISHED")

    def report_written(self, folder, experiment):
        self.client.log_artifacts(self._sweep(experiment), str(folder), artifact_path="report")

    def close(self, finished=True):
        runs, self.runs = self.runs, {}
        for run_id in runs.values():  # a run whose logging was cut short
            self.client.set_terminated(run_id, "KILLED")
        sweeps, self.sweeps = self.sweeps, {}
        for run_id in sweeps.values():
            self.client.set_terminated(run_id, "FINISHED" if finished else "FAILED")

    def _metrics(self, run_id: str, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._batches(run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items() if finite(v)])

    def _batches(self, run_id: str, **items: list) -> None:
        for kind, entries in items.items():
            size = MLFLOW_BATCH[kind]
            for start in range(0, len(entries), size):
                self.client.log_batch(run_id, **{kind: entries[start:start + size]})


def _param_text(value) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= MLFLOW_VALUE_CHARS else text[:MLFLOW_VALUE_CHARS - 3] + "..."


def _artifact_location(uri: str) -> Optional[str]:
    """Where a new MLflow experiment keeps its artifacts: beside an sqlite: store's file; else MLflow's choice."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri[len(prefix):] in ("", ":memory:"):
        return None
    return (Path(uri[len(prefix):]).expanduser().absolute().parent / "mlartifacts").as_uri()


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class TrackerKind:
    """A tracker by name: how it is made from its destination (a folder, a URI)."""

    make: Callable[[str], Tracker]
    destination: str  # what the destination is, for help texts


TRACKERS = {
    "tensorboard": TrackerKind(lambda dest: TensorBoardTracker(Path(dest)), "a folder for TensorBoard's event files"),
    "mlflow": TrackerKind(MlflowTracker, "an MLflow tracking URI (sqlite:///mlflow.db, file:..., http://host:5000)"),
}


def open_trackers(destinations: dict[str, Optional[str]], log: Callable[[str], None] = stderr_line) -> Trackers:
    """The trackers named in `destinations` ({name: destination}; None: not wanted), each checked and opened;
    `log` says when one is dropped mid-sweep."""
    made = []
    try:
        for name, destination in destinations.items():
            if destination is not None:
                if name not in TRACKERS:
                    raise unknown_choice("tracking", name, TRACKERS)
                made.append(TRACKERS[name].make(str(destination)))
    except BaseException:
        Trackers(made).close(finished=False)
        raise
    return Trackers(made, log)


__all__ = ["MlflowTracker", "TRACKERS", "TensorBoardTracker", "open_trackers", "require_mlflow",
           "require_tensorboard"]
