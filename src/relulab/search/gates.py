"""Gates on slots, ReLU budgets, and the placements the learned and random strategies try.

A *gate element* is what one placement decision is about: a whole slot (`layer`), one channel of a slot
(`channel`), or one unit, channel x position (`unit`) (relulab.zoo.masks). Each costs the ReLUs per example it
keeps nonlinear (`element_cost`). A *budget* is a ReLU count; `fill_budget` keeps the best-scored elements
that fit in it, and `placement` turns the kept elements into the spec's `model.slots` and `model.masks`.

    layout = gate_layout(model, "channel")                      # {slot: (gate shape, ReLUs per element)}
    gates = learn_gates(model, splits, spec, "channel", 20000, GateTraining(), seed=0, device=device)
    kept = fill_budget(gates, {s: cost for s, (_, cost) in layout.items()}, 20000)
    slots, masks = placement(kept, "channel")                   # -> ModelSpec(slots=..., masks=...)

The chance baseline at a budget is `random_kept`: uniform random scores, filled the same way.

`learn_gates` is SNL's lasso on slopes (Cho et al., "Selective Network Linearization", ICML 2022): every gated
element computes a * act(x) + (1 - a) * x with a trainable slope a in [0, 1], and training adds an L1 push of
the a's toward 0, weighted by what each costs, whose weight grows until the soft ReLU count (sum of cost * a)
is within the budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from relulab.core.env import matmul_precision
from relulab.core.errors import UserError, is_number, unknown_choice
from relulab.data import Splits
from relulab.training.augment import augment_batch
from relulab.training.loop import epoch_data
from relulab.training.specs import RunSpec, autocast_dtype, float32_products
from relulab.zoo.masks import GRANULARITIES, Mask, element_cost, gate_shape
from relulab.zoo.models import OFF, SlottedModel
from relulab.zoo.optim import build_optimizer, kernel_weights, weight_penalty

Layout = dict[int, tuple[tuple[int, ...], int]]
BUDGET_FIELD = "search.budgets"  # how errors name a ReLU budget: the learned and random strategies' option


def check_granularity(granularity: str, field: str = "search.granularity") -> str:
    if granularity not in GRANULARITIES:
        raise unknown_choice(field, granularity, GRANULARITIES)
    return granularity


def gate_layout(model: SlottedModel, granularity: str) -> Layout:
    """{slot index: (gate shape, ReLUs per gate element)} for the model's slots that are on (not identity) and
    have one output per example (model.slot_shapes()); a slot that is off has nothing to gate, and one met more
    or less than once per example cannot be masked."""
    check_granularity(granularity)
    return {index: (gate_shape(granularity, shape), element_cost(granularity, shape))
            for index, shape in sorted(model.slot_shapes().items()) if not model.slot(index).off}


def full_count(layout: Layout) -> int:
    """The ReLUs per example of the gated slots with every element kept."""
    return sum(math.prod(shape) * cost for shape, cost in layout.values())


def layout_costs(layout: Layout) -> dict[int, int]:
    return {index: cost for index, (_, cost) in layout.items()}


def check_budget(budget, total: int, field: str = BUDGET_FIELD) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int) or not 0 <= budget <= total:
        raise UserError(f"{field}: expected a ReLU count from 0 to {total:,} (the gated slots' elements), "
                        f"got {budget!r}")
    return budget


def fill_budget(scores: dict[int, torch.Tensor], costs: dict[int, int], budget: int) -> dict[int, torch.Tensor]:
    """Keep gate elements nonlinear in descending score order, each while it still fits the budget (sum of kept
    costs <= budget), skipping ones that do not fit and going on; ties broken by slot, then flat index. Returns
    {slot: bool tensor of the gate shape}. At unit granularity (cost 1) the kept count is the budget exactly
    (when budget <= the elements there are)."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise UserError(f"{BUDGET_FIELD}: expected a ReLU count >= 0, got {budget!r}")
    slots = sorted(scores)
    flat = [scores[s].detach().to("cpu", torch.float64).reshape(-1).numpy() for s in slots]
    values = np.concatenate(flat) if flat else np.zeros(0)
    if np.isnan(values).any():
        raise ValueError("fill_budget: a score is NaN")
    element_costs = np.concatenate([np.full(len(f), costs[s], dtype=np.int64) for s, f in zip(slots, flat)]) \
        if flat else np.zeros(0, dtype=np.int64)
    # Slot by slot, flat index within: a stable sort on the negated score breaks ties in that order.
    order = np.argsort(-values, kind="stable")
    keep = np.zeros(len(values), dtype=bool)
    keep[_greedy_fit(element_costs[order], budget)] = True
    kept = np.empty_like(keep)
    kept[order] = keep
    bounds = np.cumsum([0] + [len(f) for f in flat])
    return {s: torch.from_numpy(kept[bounds[i]:bounds[i + 1]].copy()).reshape(scores[s].shape)
            for i, s in enumerate(slots)}


def _greedy_fit(costs: np.ndarray, budget: int) -> np.ndarray:
    """Positions (into `costs`, taken in order) that the greedy fill keeps: each in turn while it fits. Done a
    run at a time, not element by element: among the elements that cost at most what is left, the leading ones
    whose running sum fits are all kept; the next one does not fit, and since what is left only shrinks, no
    element of its cost or more ever will, so each round rules out at least one cost for good (a few rounds:
    one per distinct cost at most)."""
    chosen = []
    left = budget
    start = 0
    positions = np.arange(len(costs))
    while True:
        candidates = positions[start:][costs[start:] <= left]
        if len(candidates) == 0:
            return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
        running = np.cumsum(costs[candidates])
        run = candidates[:np.searchsorted(running, left, side="right")]
        chosen.append(run)
        left -= int(costs[run].sum())
        start = int(run[-1]) + 1


def placement(kept: dict[int, torch.Tensor], granularity: str, slots_off: Optional[dict] = None
              ) -> tuple[dict, dict]:
    """(model.slots overrides, model.masks) for kept elements. `slots_off`: the overrides the placement starts
    from (the base configuration's `model.slots`), kept as they are. At layer granularity a slot kept is left as
    it is and one not kept becomes identity, with no masks; at channel and unit granularity every gated slot gets
    a mask, also when all or none of its elements are kept, so that all placements of one granularity have one
    mask layout and stack together (an all-false mask computes the identity, an all-true one the activation)."""
    check_granularity(granularity)
    slots = dict(slots_off or {})
    if granularity == "layer":
        for index, keep in kept.items():
            if not bool(keep.any()):
                slots[index] = OFF
        return slots, {}
    return slots, {index: Mask(granularity, keep.to(torch.bool)).text() for index, keep in sorted(kept.items())}


def random_kept(model: SlottedModel, granularity: str, budget: int, seed: int) -> dict[int, torch.Tensor]:
    """Chance at the same budget: uniform random scores (a CPU generator seeded by `seed`, drawn slot by slot in
    slot order), filled as the learned scores are (fill_budget). The same seed gives the same placement."""
    layout = gate_layout(model, granularity)
    check_budget(budget, full_count(layout))
    generator = torch.Generator().manual_seed(seed)
    scores = {index: torch.rand(shape, generator=generator) for index, (shape, _) in layout.items()}
    return fill_budget(scores, layout_costs(layout), budget)


# ------------------------------------------------------------------------------------------ learned gates


@dataclass
class GateTraining:
    """How the learned strategy trains its gates (the options `search.learned`)."""

    epochs: int = 2  # epochs of gate training
    # The L1 weight's starting value on the normalized soft ReLU count (sum of cost * a over the gated slots'
    # full ReLU count, 1 with every gate open): lasso 0.1 values losing every ReLU at 0.1 nat of cross-entropy.
    lasso: float = 0.1
    growth: float = 2.0  # lasso is multiplied by this after each epoch whose soft count is still above the budget
    # The gates' own optimizer is Adam at this rate. Adam because the penalty's gradient on one gate is lasso *
    # cost / full count, which spans orders of magnitude between granularities (a unit of resnet20: 1/188416; a
    # whole slot: a tenth), and so do the cross-entropy's: Adam's per-element normalisation makes a step about
    # gate_lr whatever the scale, so one rate serves every granularity, and a gate needs about 1 / gate_lr steps
    # to close. No weight decay on gates: the lasso is their only push toward 0.
    gate_lr: float = 0.01

    def validate(self, prefix: str = "search.learned", names: Optional[dict[str, str]] = None) -> "GateTraining":
        """Check the fields; errors name them as `prefix.field`, or as `prefix.names[field]` (the search options
        that carry them: search.gate_epochs)."""
        def field(key: str) -> str:
            return f"{prefix}.{(names or {}).get(key, key)}"

        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or not 1 <= self.epochs <= 10_000:
            raise UserError(f"{field('epochs')}: expected a whole number of epochs from 1 to 10000, got "
                            f"{self.epochs!r}")
        for key in ("lasso", "gate_lr"):
            value = getattr(self, key)
            if not (is_number(value) and 0 < value < math.inf):
                raise UserError(f"{field(key)}: expected a positive number, got {value!r}")
        if not (is_number(self.growth) and 1 <= self.growth < math.inf):
            raise UserError(f"{field('growth')}: expected a number >= 1 (1: the lasso stays), got {self.growth!r}")
        return self


class Gates:
    """Trainable slopes on a model's slots, attached by forward hooks (the model's class and state dict stay as
    they are): a gated slot gives a * act(x) + (1 - a) * x, a of its gate shape broadcast over the batch."""

    def __init__(self, model: SlottedModel, layout: Layout, device: torch.device):
        self.layout = layout
        self.total = full_count(layout)
        self.slopes = {index: torch.nn.Parameter(torch.ones(shape, device=device))
                       for index, (shape, _) in layout.items()}
        self._handles = [model.slot(index).register_forward_hook(self._hook(slope))
                         for index, slope in self.slopes.items()]

    @staticmethod
    def _hook(slope: torch.nn.Parameter):
        def gate(slot, inputs, output):
            x = inputs[0]
            # In float32 under autocast too (the product promotes): the slopes' gradients are small sums.
            a = slope.reshape(*slope.shape, *[1] * (output.dim() - 1 - slope.dim()))
            return a * output + (1 - a) * x
        return gate

    def soft_count(self) -> torch.Tensor:
        """Sum over gates of cost * a: the ReLUs per example the slopes keep, softly."""
        return sum(cost * self.slopes[index].sum() for index, (_, cost) in self.layout.items())

    @torch.no_grad()
    def project(self) -> None:
        for slope in self.slopes.values():
            slope.clamp_(0.0, 1.0)

    def values(self) -> dict[int, torch.Tensor]:
        return {index: slope.detach().to("cpu").clone() for index, slope in self.slopes.items()}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def learn_gates(model: SlottedModel, splits: Splits, spec: RunSpec, granularity: str, budget: int,
                training: GateTraining, seed: int, device, trace: Optional[list] = None) -> dict[int, torch.Tensor]:
    """Train slopes on the model's gate elements (shapes from gate_layout) with SNL's lasso: loss = the recipe's
    training loss (cross-entropy with its label smoothing, plus its l1/l2 kernel penalties) + lasso * soft ReLU
    count / full count; lasso grows by `training.growth` after each epoch whose soft count is above `budget`.
    The slopes start at 1 and are projected back to [0, 1] after every step.

    The model's weights train too, with the spec's optimizer at its learning rate (train.optimizer.lr, or its
    default) held constant: the recipe's schedule is laid out over train.epochs, not the few gate epochs, and a
    warm-up or decay cut short would not be the recipe either. Batches are the recipe's (train.batch_size, a new
    order each epoch from a generator seeded by `seed`, train.augment's crops and flips from it, bf16 autocast
    where autocast_dtype says); the model is modified in place (its weights end as the gate training left them),
    the gates are removed at the end. `trace`, where given, gets a record per epoch (epoch, lasso, soft_count,
    loss). Returns {slot: the final slopes, a float tensor of the gate shape, on the CPU}."""
    training.validate()
    if any(slot.keep is not None for slot in model.slots):
        raise UserError("model.masks: learned gates start from a model without masks (every element of a slot "
                        "that is on nonlinear)")
    device = torch.device(device)
    splits = splits if splits.device == device else splits.to(device)
    model.to(device)
    layout = gate_layout(model, granularity)
    check_budget(budget, full_count(layout))
    if not layout:
        return {}  # every slot off: nothing to gate
    if spec.train.augment is not None:
        spec.train.augment.check_data((len(splits.y_train), *splits.input_shape))
    gates = Gates(model, layout, device)
    try:
        with matmul_precision(float32_products(spec)):
            _train_gates(model, gates, splits, spec, budget, training, seed, device, trace)
    finally:
        gates.remove()
    return gates.values()


def _train_gates(model, gates: Gates, splits: Splits, spec: RunSpec, budget: int, training: GateTraining,
                 seed: int, device: torch.device, trace: Optional[list]) -> None:
    t = spec.train
    weights_optimizer = build_optimizer(model.parameters(), t.optimizer)
    gates_optimizer = torch.optim.Adam(list(gates.slopes.values()), lr=training.gate_lr)
    kernels, amp = kernel_weights(model), autocast_dtype(spec, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    lasso = float(training.lasso)
    model.train()
    for epoch in range(1, training.epochs + 1):
        loss_sum, examples = torch.zeros((), device=device), 0
        for xb, yb in epoch_data(splits, t.batch_size, generator):
            if t.augment is not None:
                xb = augment_batch(xb, t.augment, generator)
            if xb.dim() == 4 and xb.is_cuda:
                xb = xb.contiguous(memory_format=torch.channels_last)  # as the packed steps feed cuDNN (steps.py)
            with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=t.label_smoothing)
            total = loss + lasso * gates.soft_count() / gates.total
            if t.l1 or t.l2:
                total = total + weight_penalty(kernels, t.l1, t.l2)
            weights_optimizer.zero_grad(set_to_none=True)
            gates_optimizer.zero_grad(set_to_none=True)
            total.backward()
            weights_optimizer.step()
            gates_optimizer.step()
            gates.project()
            loss_sum += loss.detach() * len(yb)
            examples += len(yb)
        with torch.no_grad():
            soft = float(gates.soft_count())  # one read-back an epoch
        if trace is not None:
            trace.append({"epoch": epoch, "lasso": lasso, "soft_count": soft, "loss": loss_sum.item() / examples})
        if soft > budget:
            lasso *= training.growth
