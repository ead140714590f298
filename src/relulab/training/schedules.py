"""Learning-rate schedules by name (`train.schedule`), each a factor of the optimizer's learning rate per step.

    schedule: {name: step, milestones: [30, 60], gamma: 0.1, warmup_epochs: 2}

The factor is applied per batch (a `torch.optim.lr_scheduler.LambdaLR` stepped after every optimizer step), not
per epoch: warm-up, cosine and one-cycle then change smoothly within an epoch, as the recipes that use them do
(one-cycle is defined per step), while step milestones are epochs and so still change at epoch boundaries. A
linear warm-up combines with each schedule: over the first `warmup_epochs` epochs it multiplies the schedule's
factor by (step + 1) / warm-up steps, rising to 1. The scheduler's state travels with a resumed run's
(relulab.training.resume).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Callable, Optional

import torch

from relulab.core.errors import UserError, is_number, unknown_choice
from relulab.core.ranges import show_int


@dataclass
class ScheduleSpec:
    """Which schedule, with its settings; a field a schedule does not use must stay at its default."""

    name: str = "constant"  # one of SCHEDULES
    milestones: list[int] = field(default_factory=list)  # step: the epochs after which the rate is multiplied
    gamma: float = 0.1  # step: by this
    warmup_epochs: int = 0  # any schedule: linear warm-up over this many epochs
    pct_start: float = 0.3  # one-cycle (PyTorch's OneCycleLR): the part of the steps spent rising
    div_factor: float = 25.0  # one-cycle: starts at lr / div_factor
    final_div_factor: float = 1e4  # one-cycle: ends at lr / (div_factor * final_div_factor)

    def validate(self, epochs: int, prefix: str = "train.schedule") -> "ScheduleSpec":
        if self.name not in SCHEDULES:
            raise unknown_choice(f"{prefix}.name", self.name, SCHEDULES)
        defaults = ScheduleSpec()
        for f in fields(self):
            if f.name not in ("name", "warmup_epochs", *SCHEDULES[self.name].fields) \
                    and getattr(self, f.name) != getattr(defaults, f.name):
                raise UserError(f"{prefix}.{f.name}: the {self.name} schedule does not use it")
        _check_milestones(self.milestones, epochs, f"{prefix}.milestones")
        if not (isinstance(self.warmup_epochs, int) and not isinstance(self.warmup_epochs, bool)
                and 0 <= self.warmup_epochs <= epochs):
            shown = show_int(self.warmup_epochs) if isinstance(self.warmup_epochs, int) else repr(self.warmup_epochs)
            raise UserError(f"{prefix}.warmup_epochs: expected an integer from 0 to {epochs} (the run's epochs), "
                            f"got {shown}")
        for key in ("gamma", "div_factor", "final_div_factor"):
            value = getattr(self, key)
            if not (is_number(value) and 0 < value < math.inf):
                raise UserError(f"{prefix}.{key}: expected a positive number, got {value!r}")
        if not (is_number(self.pct_start) and 0 < self.pct_start < 1):
            raise UserError(f"{prefix}.pct_start: expected a number between 0 and 1, got {self.pct_start!r}")
        return self


def _check_milestones(milestones, epochs: int, path: str) -> None:
    if not isinstance(milestones, (list, tuple)) or not all(
            isinstance(m, int) and not isinstance(m, bool) for m in milestones):
        raise UserError(f"{path}: expected a list of epochs, e.g. [30, 60]")
    if list(milestones) != sorted(set(milestones)) or any(not 1 <= m < epochs for m in milestones):
        shown = ", ".join(show_int(m) for m in milestones[:5]) + (", ..." if len(milestones) > 5 else "")
        raise UserError(f"{path}: expected increasing epochs from 1 to {epochs - 1} (before the run's last), "
                        f"got [{shown}]")


@dataclass(frozen=True)
class Timeline:
    """Where a step is: `step` counts optimizer steps from 0; `steps_per_epoch` of `total` in the run."""

    step: int
    steps_per_epoch: int
    total: int


def _constant(spec: ScheduleSpec, at: Timeline) -> float:
    return 1.0


def _step(spec: ScheduleSpec, at: Timeline) -> float:
    passed = sum(1 for m in spec.milestones if at.step >= m * at.steps_per_epoch)
    return spec.gamma ** passed


def _cosine(spec: ScheduleSpec, at: Timeline) -> float:
    """CosineAnnealingLR's closed form over the whole run, down to 0."""
    return 0.5 * (1 + math.cos(math.pi * at.step / at.total))


def _anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)


def _one_cycle(spec: ScheduleSpec, at: Timeline) -> float:
    """PyTorch's OneCycleLR (two phases, cosine annealing), as a factor of its max_lr, the optimizer's lr."""
    start, low = 1 / spec.div_factor, 1 / (spec.div_factor * spec.final_div_factor)
    rise_end = float(spec.pct_start * at.total) - 1
    if 0 < rise_end and at.step <= rise_end:  # a run too short to rise (OneCycleLR divides by zero) starts at lr
        return _anneal(start, 1.0, at.step / rise_end)
    fall = (at.total - 1) - rise_end
    return _anneal(1.0, low, (at.step - rise_end) / fall) if fall > 0 else low


@dataclass(frozen=True)
class Schedule:
    factor: Callable[[ScheduleSpec, Timeline], float]
    fields: tuple[str, ...] = ()  # the ScheduleSpec fields it reads, besides name and warmup_epochs


SCHEDULES = {
    "constant": Schedule(_constant),
    "step": Schedule(_step, ("milestones", "gamma")),
    "cosine": Schedule(_cosine),
    "one-cycle": Schedule(_one_cycle, ("pct_start", "div_factor", "final_div_factor")),
}


def factor(spec: ScheduleSpec, at: Timeline) -> float:
    """The learning rate of step `at.step` as a factor of the optimizer's: the schedule's, times the warm-up's."""
    value = SCHEDULES[spec.name].factor(spec, at)
    warmup_steps = spec.warmup_epochs * at.steps_per_epoch
    return value * min(1.0, (at.step + 1) / warmup_steps) if warmup_steps else value


def learning_rates(lr: float, spec: Optional[ScheduleSpec], steps_per_epoch: int, epochs: int) -> list[float]:
    """The learning rate of every step of a run, as `build_scheduler`'s LambdaLR sets it (lr x factor): packed
    runs read theirs from a table of these on the device (relulab.packing.units)."""
    total = steps_per_epoch * epochs
    if spec is None:
        return [lr] * total
    return [lr * factor(spec, Timeline(step, steps_per_epoch, total)) for step in range(total)]


def build_scheduler(optimizer: torch.optim.Optimizer, spec: ScheduleSpec, steps_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler to step after every optimizer step. Its factor is a plain function (not an object), so its
    state_dict holds only numbers and a saved run loads with torch.load(weights_only=True)."""
    total = steps_per_epoch * epochs

    def at_step(step: int) -> float:
        return factor(spec, Timeline(step, steps_per_epoch, total))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, at_step)
