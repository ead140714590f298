"""Callbacks (fastai-style, one job each): hooks that see the model and each epoch's record."""
from __future__ import annotations

import math
import sys
from typing import Optional

import torch
from torch import nn

from relulab.training.specs import EpochRecord, History, TrainSpec


class Callback:
    """Hooks into training; override what you need. Each callback should have one job.

    A run saved mid-way (relulab.resume) saves its callbacks' `state()` with it and hands it to `restore` when it
    goes on; a callback whose state cannot be saved sets `resumable = False`, and a run with it starts again."""

    resumable = True

    def state(self) -> dict:
        return {}

    def restore(self, state: dict) -> None: ...

    def on_train_begin(self, model: nn.Module, spec: TrainSpec) -> None: ...

    def on_epoch_end(self, model: nn.Module, record: EpochRecord) -> None: ...

    def on_train_end(self, model: nn.Module, history: History) -> None: ...


class BestWeights(Callback):
    """Keeps a copy of the model's weights at its best epoch (the one `History.best` picks: the first with the
    highest validation accuracy), so that what a run's best accuracy describes can be kept, not only the
    final model. One copy on the model's device, refreshed only when an epoch beats the best so far."""

    def __init__(self):
        self.weights: Optional[dict[str, torch.Tensor]] = None
        self.epoch: Optional[int] = None
        self._best = -math.inf

    def on_epoch_end(self, model, record):
        if math.isfinite(record.val_acc) and record.val_acc > self._best:
            self._best, self.epoch = record.val_acc, record.epoch
            self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def state(self) -> dict:
        return {"best": self._best, "epoch": self.epoch, "weights": self._weights_cpu()}

    def restore(self, state: dict) -> None:
        self._best, self.epoch, self.weights = state["best"], state["epoch"], state["weights"]

    def best_state(self, history: "History") -> Optional[dict[str, torch.Tensor]]:
        """The weights at the best epoch, where that is not the last (then the final model is the best)."""
        last = history.epochs[-1].epoch if history.epochs else None
        return None if self.epoch == last else self._weights_cpu()

    def _weights_cpu(self) -> Optional[dict[str, torch.Tensor]]:
        return None if self.weights is None else {k: v.cpu() for k, v in self.weights.items()}


class ProgressBar(Callback):
    """A rich progress bar on a terminal; silent when output is piped."""

    def __init__(self, label: str = "training"):
        self.label, self.progress, self.task = label, None, None

    def on_train_begin(self, model, spec):
        if not sys.stderr.isatty():
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.progress = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), transient=True)
        self.progress.start()
        self.task = self.progress.add_task(self.label, total=spec.epochs)

    def on_epoch_end(self, model, record):
        if self.progress:
            self.progress.update(self.task, advance=1,
                                 description=f"{self.label} val_acc {record.val_acc:.4f}")

    def on_train_end(self, model, history):
        if self.progress:
            self.progress.stop()
