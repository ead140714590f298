"""Per-slot statistics from forward hooks on the activation slots.

    numbers = probe(model, x_val[:512], stats=("sparsity",))
    numbers["sparsity"][3]          # fraction of exact zeros in slot 3's output

A hook sits on every `models.Slot`, so a statistic sees the slot's input (the
pre-activation) and its output, even for parameter-free activations (fastai#3504
missed those). Each statistic reduces on the device to one number per batch; the
numbers are combined across batches on the device and copied to the host once, at
the end (copying whole activations every batch is the well-known slowdown,
pytorch#43328).

A statistic is a `Stat` in the `STATS` registry: a function of (slot input, slot
output) returning a 0-d tensor for the batch, and how batch values combine. Means
of per-element quantities combine as a mean weighted by batch size, which is exact
because every example of a batch has the same number of elements. Add a statistic
by adding an entry; each one is checked against a numpy computation of its
definition in the tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from .errors import unknown_choice
from .models import Slot

Tensor = torch.Tensor


@dataclass(frozen=True)
class Stat:
    name: str
    fn: Callable[[Tensor, Tensor], Tensor]  # (slot input, slot output) of one batch -> 0-d tensor
    combine: str = "mean"  # how batch values combine: a key of COMBINE
    description: str = ""


def _as_float(x: Tensor) -> Tensor:
    return x.detach().float()


STATS: dict[str, Stat] = {
    s.name: s
    for s in [
        Stat("sparsity", lambda x, y: (y == 0).float().mean(),
             description="fraction of exact zeros in the slot's output"),
        Stat("negative_fraction", lambda x, y: (x < 0).float().mean(),
             description="fraction of the slot's input (pre-activation) below zero"),
        Stat("mean", lambda x, y: _as_float(y).mean(), description="mean of the slot's output"),
        Stat("max_abs", lambda x, y: _as_float(y).abs().max(), combine="max",
             description="largest |output| of the slot"),
    ]
}


def _weighted_mean(total: Optional[Tensor], value: Tensor, weight: int) -> Tensor:
    return value * weight if total is None else total + value * weight


def _running_max(total: Optional[Tensor], value: Tensor, weight: int) -> Tensor:
    return value if total is None else torch.maximum(total, value)


# name -> (accumulate(total, batch value, batch size), finish(total, examples seen))
COMBINE = {
    "mean": (_weighted_mean, lambda total, n: total / n),
    "max": (_running_max, lambda total, n: total),
}


def stat_names() -> list[str]:
    return sorted(STATS)


def check_stats(names: Iterable[str], field: str = "probes") -> list[str]:
    names = list(names)
    for name in names:
        if name not in STATS:
            raise unknown_choice(field, name, STATS)
    return names


def slots_of(model: nn.Module) -> list[Slot]:
    return [m for m in model.modules() if isinstance(m, Slot)]


@torch.no_grad()
def probe(model: nn.Module, x: Tensor, y: Optional[Tensor] = None, stats: Iterable[str] = ("sparsity",),
          batch_size: int = 1024) -> dict[str, dict[int, float]]:
    """{stat: {slot index: value}} over the examples `x`, with the model in eval mode.

    `y` (labels) is accepted for statistics that will split by class; none does yet."""
    names = check_stats(stats)
    slots = slots_of(model)
    totals: dict[tuple[str, int], Optional[Tensor]] = {(n, s.index): None for n in names for s in slots}
    batch_n = [0]

    def hook(slot: Slot, inputs, output):
        for name in names:
            stat = STATS[name]
            accumulate = COMBINE[stat.combine][0]
            totals[name, slot.index] = accumulate(totals[name, slot.index], stat.fn(inputs[0], output), batch_n[0])

    handles = [s.register_forward_hook(hook) for s in slots]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(x), batch_size):
            batch_n[0] = len(x[start:start + batch_size])
            model(x[start:start + batch_size])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not slots or not len(x):
        return {name: {} for name in names}
    keys = list(totals)
    finished = [COMBINE[STATS[n].combine][1](totals[n, i], len(x)) for n, i in keys]
    values = torch.stack(finished).cpu().tolist()  # the one copy to the host
    result: dict[str, dict[int, float]] = {name: {} for name in names}
    for (name, index), value in zip(keys, values):
        result[name][index] = value
    return result
