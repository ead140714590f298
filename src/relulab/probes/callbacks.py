"""Training callbacks that probe a model as it trains (relulab.training.callbacks), on the statistics of
relulab.probes.statistics.

- `SlotProbe`: what a spec's `probes:` ask for; the chosen statistics on the first validation images before
  training (epoch 0, the model as initialised) and after every epoch. A sweep stores them in `slot_stats`.
- `EpochProbe`: every statistic on a probe set (first, per-class:N, val:N) after chosen epochs, or after the
  last: what `relulab probe` measures when it must train the model to see it at those epochs.

Both are plain data to ask for (`EpochProbeRequest`, or a (statistics, size) pair for a SlotProbe), so that a
task can carry the request to wherever it trains (a Ray worker) and build the callback there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch

from relulab.probes.statistics import ProbeResult, ProbeSet, measure, probe, select_probe_set, stat_names
from relulab.training.callbacks import Callback


class SlotProbe(Callback):
    """Per-slot statistics on a fixed probe set before training (epoch 0: the model as initialised) and after
    every epoch (reduced on the device)."""

    def __init__(self, x: torch.Tensor, stats: Sequence[str], y: Optional[torch.Tensor] = None):
        self.x, self.y, self.stats, self.by_epoch = x, y, list(stats), {}

    def _measure(self, model) -> dict:
        # With labels, gradient statistics (grad_norm...) are measured too; without, they are NaN.
        return probe(model, self.x, self.y, stats=self.stats)

    def on_train_begin(self, model, spec) -> None:
        # Seed 002's premise (SELU keeps each layer near mean 0, variance 1) is about the initialised network.
        self.by_epoch[0] = self._measure(model)

    def on_epoch_end(self, model, record) -> None:
        self.by_epoch[record.epoch] = self._measure(model)

    def state(self) -> dict:
        # A resumed run restores the epochs measured before the interruption (epoch 0 included).
        return {"by_epoch": self.by_epoch}

    def restore(self, state: dict) -> None:
        self.by_epoch = dict(state.get("by_epoch", {}))


class EpochProbe(Callback):
    """A training callback: every statistic on the probe set after the chosen epochs (and the last one)."""

    def __init__(self, x, y, classes, epochs: Optional[Iterable[int]]):
        self.x, self.y, self.classes = x, y, classes
        self.epochs = set(epochs or ())
        self.final = epochs is None
        self.results: dict[int, ProbeResult] = {}

    def _measure(self, model) -> ProbeResult:
        return measure(model, self.x, self.y, stat_names(), classes=self.classes)

    def on_epoch_end(self, model, record) -> None:
        if record.epoch in self.epochs:
            self.results[record.epoch] = self._measure(model)

    def on_train_end(self, model, history) -> None:
        last = len(history.epochs)
        if self.final and last not in self.results:
            self.results[last] = self._measure(model)


@dataclass(frozen=True)
class EpochProbeRequest:
    """An EpochProbe as plain data: the probe set and the epochs (None: the last)."""

    probe_set: ProbeSet
    epochs: Optional[tuple[int, ...]] = None

    def callback(self, splits) -> EpochProbe:
        x, y = select_probe_set(splits, self.probe_set)
        return EpochProbe(x, y, splits.classes, self.epochs)


def slot_probe(request: tuple, splits) -> SlotProbe:
    """The SlotProbe of a spec's `probes:` request, (statistics, probe size): on the first validation images."""
    stats, size = request
    return SlotProbe(splits.x_val[:size], stats, splits.y_val[:size])
