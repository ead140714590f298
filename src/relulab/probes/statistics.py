"""Per-slot statistics from forward hooks on the activation slots, per layer and per class.

    numbers = probe(model, x_val[:512], stats=("sparsity",))
    numbers["sparsity"][3]          # fraction of exact zeros in slot 3's output

    result = measure(model, x, y, stats=["ratio_num", "ratio_sum"], classes=splits.classes)
    result.overall["ratio_num"][7]  # slot 7, averaged over the probe images
    result.by_class["ratio_num"][7] # slot 7, one value per class (the seed's layer x class table)

A hook sits on every `models.Slot`, so a statistic sees the slot's input (the
pre-activation: the conv or dense output before its slot, as seed 000 measured it)
and its output, even for parameter-free activations (fastai#3504 missed those).
Statistics are computed on the slot's INPUT unless their name ends in `_out` or their
description says output (sparsity, saturation, max_abs).

How a statistic is computed: on each batch it returns a few numbers PER IMAGE (its
"components", shape (images, m)); these are summed (or maxed) per class on the
device, and at the end a `finish` function turns the per-class totals into the
value, once per class and once for all images (the "average" column). Everything
stays on the device; the finished numbers of every statistic, slot and class are
copied to the host in one transfer (copying activations every batch is the
well-known slowdown, pytorch#43328). The probe runs with the model in eval mode, so
batch norm uses its running statistics and images do not affect each other.

Definitions (x = a slot's input, y = its output; "per image" = over all positions
and channels of that image's slot tensor):

- `ratio_num`: per image count(x < 0) / count(x >= 0), averaged over the images.
  Zeros count as non-negative, as in the seed's notebook.
- `ratio_sum`: per image sum(x[x < 0]) / sum(x[x >= 0]) (a negative number), averaged.
  For both ratios, an image whose denominator is 0 (no non-negative entry, or
  non-negative entries that are all exactly 0) has no ratio: it is left out of the
  average, and the value is NaN if no image of the set (or class) has one.
- `negative_fraction`: fraction of entries of x below 0.
- `mean`, `std`: mean and standard deviation of x over every entry of the probe set
  (population std, ddof 0); `mean_out`, `std_out`: the same of y.
- `sparsity`: fraction of exact zeros in y.
- `saturation`: for sigmoid and tanh slots, the fraction of y within
  `SATURATION_MARGIN` (0.01) of an asymptote (sigmoid: y < 0.01 or y > 0.99;
  tanh: |y| > 0.99; the derivative there is below 4% of its peak). NaN for other
  activations.
- `dead_fraction`: fraction of units that are never positive (x > 0 nowhere) on the
  whole probe set (per class: on that class's images). A unit is a channel of a
  conv layer (all its positions together) or a neuron of a dense layer.
- `sign_entropy` (EASIER, SPEC 2.2): per unit and position, p = P(x >= 0) over the
  probe images, H = -p log2 p - (1 - p) log2 (1 - p) in bits (0 log 0 = 0), averaged
  over positions and units. `sign_entropy_channel`: the same with p pooled over a
  channel's positions too (p per unit over images and positions; identical to
  `sign_entropy` for dense layers).
- `grad_norm`: per image, the L2 norm of the gradient of that image's cross-entropy
  loss with respect to the slot's OUTPUT, averaged over images (a backward pass in
  eval mode; needs labels). `grad_norm_in`: the same with respect to the slot's input
  (the pre-activation: the output gradient times the activation's derivative).
- `max_abs`: the largest |y| (maximum over images, not a mean).

`dead_fraction`, `sign_entropy` and `sign_entropy_channel` are taken across the probe
images, so on a class with one image (the `first` probe set) they are fixed by their
definition (sign entropy is 0; "never positive" means "not positive on that image"):
`degenerate` says so, and tables and heatmaps show "n/a (1 image)" there instead of a
number (the CSV keeps the value, with its `images` count).

A statistic is a `Stat` in the `STATS` registry; add one by adding an entry. Each is
checked against a plain numpy computation of its definition in the tests.

Probe sets (`parse_probe_set`, `select_probe_set`): `first` (the first training image
of each class: seed 000's set), `per-class:N` (the first N training images of each
class), `val:N` (the first N validation images).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from relulab.zoo.activations import parse_activation
from relulab.core.errors import UserError, unknown_choice
from relulab.zoo.models import Slot, slot_outputs

Tensor = torch.Tensor
SATURATION_MARGIN = 0.01
ASYMPTOTES = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}  # the saturating activations' limits


@dataclass
class SlotBatch:
    """What a statistic sees of one slot on one batch (all detached)."""

    x: Tensor  # the slot's input (pre-activation), (B, ...)
    y: Tensor  # the slot's output
    slot: Slot
    grad_out: Optional[Tensor] = None  # d(sum of the images' losses) / dy, when a statistic asked for it
    grad_in: Optional[Tensor] = None  # ... / dx

    def flat(self, t: Tensor) -> Tensor:
        return t.reshape(len(t), -1).float()

    def units(self, t: Tensor) -> Tensor:
        """(B, units, positions): channels of a conv tensor, neurons of a dense one (one position each)."""
        return t.reshape(t.shape[0], t.shape[1] if t.dim() > 1 else 1, -1).float()


@dataclass(frozen=True)
class Stat:
    name: str
    fn: Callable[[SlotBatch], Optional[Tensor]]  # batch -> per-image components (B, m); None: undefined (NaN)
    finish: Callable[[Tensor, Tensor], Tensor]  # (components reduced over a group (G, m), images (G,)) -> (G,)
    reduce: str = "sum"  # how images combine: sum | max
    grad: str = ""  # "" | "output" | "input": the statistic needs that gradient (and labels)
    description: str = ""
    # Images a group (a class, or the whole set) needs for the value to mean what the name says: a statistic taken
    # ACROSS the probe images (how often a unit is non-negative, whether it is ever positive) is fixed by
    # definition on one image (sign entropy 0) or says something else (dead_fraction: "not positive on this
    # image").
    min_images: int = 1


def _mean(t: Tensor) -> Tensor:
    return t.mean(1, dtype=torch.float64)


def _col(*columns: Tensor) -> Tensor:
    return torch.stack(columns, 1)


def _per_image_mean(s: Tensor, n: Tensor) -> Tensor:
    return s[:, 0] / n


def _defined_mean(s: Tensor, n: Tensor) -> Tensor:
    # components: (value where defined else 0, 1 where defined); 0 / 0 = NaN when no image has a value
    return s[:, 0] / s[:, 1]


def _std(s: Tensor, n: Tensor) -> Tensor:
    mean, square = s[:, 0] / n, s[:, 1] / n
    return (square - mean * mean).clamp(min=0).sqrt()


def _identity(s: Tensor, n: Tensor) -> Tensor:
    return s[:, 0]


def _never_positive(s: Tensor, n: Tensor) -> Tensor:
    return (s <= 0).double().mean(1)


def _binary_entropy(p: Tensor) -> Tensor:
    q = 1 - p
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(q, q)) / math.log(2)


def _mean_entropy(s: Tensor, n: Tensor) -> Tensor:
    return _binary_entropy(s / n.unsqueeze(1)).mean(1)


def _ratio_num(b: SlotBatch) -> Tensor:
    x = b.flat(b.x)
    negative = (x < 0).sum(1, dtype=torch.float64)
    positive = x.shape[1] - negative  # zeros count as non-negative
    defined = positive > 0
    return _col(torch.where(defined, negative / positive.clamp(min=1), 0.0), defined.double())


def _ratio_sum(b: SlotBatch) -> Tensor:
    x = b.flat(b.x)
    negative = x.clamp(max=0).sum(1, dtype=torch.float64)
    positive = x.clamp(min=0).sum(1, dtype=torch.float64)
    defined = positive > 0
    return _col(torch.where(defined, negative / torch.where(defined, positive, 1.0), 0.0), defined.double())


def _moments(t: Tensor) -> Tensor:
    t = t.double()
    return _col(t.mean(1), (t * t).mean(1))


def _saturation(b: SlotBatch) -> Optional[Tensor]:
    name = parse_activation(b.slot.spec)[0].name
    if name not in ASYMPTOTES:
        return None
    low, high = ASYMPTOTES[name]
    y = b.flat(b.y)
    return _col(_mean((y < low + SATURATION_MARGIN) | (y > high - SATURATION_MARGIN)))


def _grad_norm(which: str) -> Callable[[SlotBatch], Tensor]:
    def fn(b: SlotBatch) -> Tensor:
        g = b.grad_out if which == "output" else b.grad_in
        if g is None:  # the slot does not reach the loss
            return _col(torch.zeros(len(b.x), dtype=torch.float64, device=b.x.device))
        return _col(g.reshape(len(g), -1).double().norm(dim=1))
    return fn


STATS: dict[str, Stat] = {
    s.name: s
    for s in [
        Stat("ratio_num", _ratio_num, _defined_mean,
             description="per image count(x < 0) / count(x >= 0) of the slot's input, averaged over images "
                         "(source 000)"),
        Stat("ratio_sum", _ratio_sum, _defined_mean,
             description="per image sum(x < 0) / sum(x >= 0) of the slot's input, averaged over images (source 000)"),
        Stat("negative_fraction", lambda b: _col(_mean(b.flat(b.x) < 0)), _per_image_mean,
             description="fraction of the slot's input below zero"),
        Stat("mean", lambda b: _col(_mean(b.flat(b.x))), _per_image_mean, description="mean of the slot's input"),
        Stat("std", lambda b: _moments(b.flat(b.x)), _std,
             description="standard deviation of the slot's input over the probe set"),
        Stat("mean_out", lambda b: _col(_mean(b.flat(b.y))), _per_image_mean,
             description="mean of the slot's output"),
        Stat("std_out", lambda b: _moments(b.flat(b.y)), _std,
             description="standard deviation of the slot's output over the probe set"),
        Stat("sparsity", lambda b: _col(_mean(b.flat(b.y) == 0)), _per_image_mean,
             description="fraction of exact zeros in the slot's output"),
        Stat("saturation", _saturation, _per_image_mean,
             description=f"sigmoid/tanh: fraction of the output within {SATURATION_MARGIN} of an asymptote"),
        Stat("dead_fraction", lambda b: b.units(b.x).amax(2), _never_positive, reduce="max", min_images=2,
             description="fraction of units (channels or neurons) whose input is never positive on the probe set"),
        Stat("sign_entropy", lambda b: (b.flat(b.x) >= 0).double(), _mean_entropy, min_images=2,
             description="EASIER: binary entropy (bits) of P(input >= 0) over the probe set, per unit and "
                         "position, averaged"),
        Stat("sign_entropy_channel", lambda b: (b.units(b.x) >= 0).double().mean(2), _mean_entropy, min_images=2,
             description="binary entropy (bits) of P(input >= 0) per channel, pooled over images and positions"),
        Stat("grad_norm", _grad_norm("output"), _per_image_mean, grad="output",
             description="per image L2 norm of d loss / d output of the slot, averaged"),
        Stat("grad_norm_in", _grad_norm("input"), _per_image_mean, grad="input",
             description="per image L2 norm of d loss / d input of the slot, averaged"),
        Stat("max_abs", lambda b: _col(b.flat(b.y).abs().amax(1).double()), _identity, reduce="max",
             description="largest |output| of the slot"),
    ]
}


def stat_names() -> list[str]:
    return list(STATS)


def check_stats(names: Iterable[str], field: str = "probes") -> list[str]:
    names = list(names)
    for name in names:
        if name not in STATS:
            raise unknown_choice(field, name, STATS)
    return names


def parse_stats(text: Optional[str], field: str = "probe.stats") -> list[str]:
    """'ratio_num,ratio_sum' -> the names, checked; None, '' or 'all' -> every statistic."""
    if text is None or text.strip() in ("", "all"):
        return stat_names()
    return check_stats([t.strip() for t in text.split(",") if t.strip()], field)


def slots_of(model: nn.Module) -> list[Slot]:
    """The model's slots by number: the order the data meets them, whatever order the model's modules are in."""
    return sorted((m for m in model.modules() if isinstance(m, Slot)), key=lambda s: s.index)


@dataclass
class ProbeResult:
    """Statistics per slot: over all probe images (`overall`) and per class (`by_class`, one value per class)."""

    stats: list[str]
    slots: list[int]
    classes: list[str]
    counts: list[int]  # probe images per class
    overall: dict[str, dict[int, float]] = field(default_factory=dict)
    by_class: dict[str, dict[int, list[float]]] = field(default_factory=dict)

    @property
    def images(self) -> int:
        return sum(self.counts)

    def rows(self) -> list[tuple[str, int, int, str, float]]:
        """(stat, slot, class index (-1: all images), class name ('average'), value) for every number."""
        out = []
        for name in self.stats:
            for slot in self.slots:
                for c, value in enumerate(self.by_class[name][slot]):
                    out.append((name, slot, c, self.classes[c], value))
                out.append((name, slot, -1, "average", self.overall[name][slot]))
        return out

    def store_rows(self) -> list[tuple[str, int, int, str, int, float]]:
        """The rows a store's `run_probes` table holds: (stat, slot, class, class name, images, value)."""
        return [(stat, slot, cls, name, self.counts[cls] if cls >= 0 else self.images, value)
                for stat, slot, cls, name, value in self.rows()]


def _reduce_into(total: Optional[Tensor], comps: Tensor, cls: Tensor, groups: int, how: str) -> Tensor:
    if total is None:
        fill = -math.inf if how == "max" else 0.0
        total = torch.full((groups, comps.shape[1]), fill, dtype=torch.float64, device=comps.device)
    comps = comps.double()
    if how == "max":
        return total.scatter_reduce_(0, cls.unsqueeze(1).expand_as(comps), comps, reduce="amax", include_self=True)
    return total.index_add_(0, cls, comps)


def _finish(stat: Stat, total: Optional[Tensor], counts: Tensor, groups: int, device) -> Tensor:
    """(groups + 1,) values: one per class, then all images together."""
    if total is None:  # undefined for this slot (saturation of a ReLU)
        return torch.full((groups + 1,), math.nan, dtype=torch.float64, device=device)
    overall = total.amax(0, keepdim=True) if stat.reduce == "max" else total.sum(0, keepdim=True)
    n = torch.cat([counts, counts.sum().unsqueeze(0)])
    values = stat.finish(torch.cat([total, overall]), n)
    return torch.where(n > 0, values, math.nan)


def measure(model: nn.Module, x: Tensor, y: Optional[Tensor] = None, stats: Iterable[str] = ("sparsity",),
            classes: Optional[Sequence[str]] = None, batch_size: int = 256) -> ProbeResult:
    """Every statistic of `stats` at every slot of `model` on the images `x` (labels `y`), per class and overall.

    The model is put in eval mode (and back); gradients of the model's parameters are
    not touched. Without labels every image is in one class, and the gradient
    statistics cannot be computed."""
    names = check_stats(stats)
    slots = slots_of(model)
    needs_grad = any(STATS[n].grad for n in names)
    if needs_grad and y is None:
        bad = next(n for n in names if STATS[n].grad)
        raise UserError(f"probes: {bad} needs the probe images' labels")
    groups = len(classes) if classes else (int(y.max()) + 1 if y is not None and len(y) else 1)
    class_names = list(classes) if classes else [str(c) for c in range(groups)]
    device = x.device
    totals: dict[tuple[str, int], Optional[Tensor]] = {(n, s.index): None for n in names for s in slots}
    counts = torch.zeros(groups, dtype=torch.float64, device=device)
    seen: dict[int, tuple[Slot, Tensor, Tensor]] = {}

    def hook(slot: Slot, inputs, output):
        seen[slot.index] = (slot, inputs[0], output)

    handles = [s.register_forward_hook(hook) for s in slots]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size]
            cls = (y[start:start + batch_size].to(device).long() if y is not None
                   else torch.zeros(len(xb), dtype=torch.long, device=device))
            seen.clear()
            grads: dict[int, tuple[Tensor, Tensor]] = {}
            if needs_grad:
                with torch.enable_grad():
                    logits = model(xb.detach().requires_grad_(True))
                    loss = F.cross_entropy(logits.float(), cls, reduction="sum")  # each image: its own gradient
                    order = list(seen)
                    tensors = [t for i in order for t in (seen[i][2], seen[i][1])]
                    found = torch.autograd.grad(loss, tensors, allow_unused=True)
                    for j, i in enumerate(order):
                        grads[i] = (found[2 * j], found[2 * j + 1])
            else:
                with torch.no_grad():
                    model(xb)
            counts.index_add_(0, cls, torch.ones(len(xb), dtype=torch.float64, device=device))
            with torch.no_grad():
                for index, (slot, xin, out) in seen.items():
                    g_out, g_in = grads.get(index, (None, None))
                    batch = SlotBatch(xin.detach(), out.detach(), slot, g_out, g_in)
                    for name in names:
                        comps = STATS[name].fn(batch)
                        if comps is not None:
                            totals[name, index] = _reduce_into(totals[name, index], comps, cls, groups,
                                                               STATS[name].reduce)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    result = ProbeResult(names, [s.index for s in slots], class_names, [0] * groups)
    if not slots or not len(x):
        result.overall = {n: {} for n in names}
        result.by_class = {n: {} for n in names}
        return result
    keys = list(totals)
    table = torch.stack([_finish(STATS[n], totals[n, i], counts, groups, device) for n, i in keys])
    values = table.cpu().tolist()  # the one copy to the host
    result.counts = [int(c) for c in counts.cpu().tolist()]
    for (name, index), row in zip(keys, values):
        result.overall.setdefault(name, {})[index] = row[-1]
        result.by_class.setdefault(name, {})[index] = row[:-1]
    return result


def probe(model: nn.Module, x: Tensor, y: Optional[Tensor] = None, stats: Iterable[str] = ("sparsity",),
          batch_size: int = 256) -> dict[str, dict[int, float]]:
    """{stat: {slot index: value}} over the examples `x` (all of them together), with the model in eval mode.

    `y` (labels) is needed for the gradient statistics; without labels they are NaN here (this is the
    per-epoch callback's entry point, which must not stop a training run), while `measure` refuses."""
    names = check_stats(stats)
    if y is None and any(STATS[n].grad for n in names):
        computed = measure(model, x, None, [n for n in names if not STATS[n].grad], batch_size=batch_size).overall
        slots = [s.index for s in slots_of(model)]
        return {n: computed[n] if n in computed else {i: math.nan for i in slots} for n in names}
    return measure(model, x, y, names, batch_size=batch_size).overall


# ---------------------------------------------------------------- probe sets


@dataclass(frozen=True)
class ProbeSet:
    kind: str  # first | per-class | val
    n: int = 1

    @property
    def name(self) -> str:
        return "first" if self.kind == "first" else f"{self.kind}:{self.n}"


PROBE_SET_HELP = "first, per-class:N or val:N"


def parse_probe_set(text, field: str = "probe.probe_set") -> ProbeSet:
    text = str(text).strip() if text is not None else ""
    if text == "first":
        return ProbeSet("first", 1)
    match = re.fullmatch(r"(per-class|val):(\d+)", text)
    if not match or int(match.group(2)) < 1:
        raise UserError(f"{field}: expected {PROBE_SET_HELP}, got {text!r}")
    return ProbeSet(match.group(1), int(match.group(2)))


def select_probe_set(splits, probe_set: ProbeSet) -> tuple[Tensor, Tensor]:
    """(images, labels) of the probe set, in class order for the training-set kinds. `per-class:N` takes up
    to N images of a class (fewer if it has fewer); `val:N` up to the first N validation images."""
    if probe_set.kind == "val":
        return splits.x_val[:probe_set.n], splits.y_val[:probe_set.n]
    labels = splits.y_train
    picks = []
    for c in range(splits.num_classes):
        where = torch.nonzero(labels == c).flatten()[:probe_set.n]
        picks.append(where)
    index = torch.cat(picks) if picks else torch.zeros(0, dtype=torch.long)
    return splits.train_examples(index), labels[index]


# ---------------------------------------------------------------- tables


def degenerate(stat: str, images: int) -> bool:
    """Whether `stat` over a group of `images` probe images is fixed by its definition rather than measured (see
    `Stat.min_images`): e.g. sign entropy per class on a one-image-per-class probe set. An empty group is not
    degenerate: it has no value (NaN)."""
    return 0 < images < STATS[stat].min_images if stat in STATS else False


def degenerate_text(images: int) -> str:
    """What a table shows instead of a degenerate value."""
    return f"n/a ({images} image{'' if images == 1 else 's'})"


def degenerate_columns(result: ProbeResult, stat: str) -> list[bool]:
    """For `class_table`'s value columns (each class, then the average): whether that column is degenerate."""
    return [degenerate(stat, n) for n in [*result.counts, result.images]]


def class_table(result: ProbeResult, stat: str) -> tuple[list[str], list[list[float]]]:
    """Seed 000's layout for one statistic: a row per slot (layer), a column per class, then the average.
    Returns (header, rows) with rows [slot, class values..., average]."""
    header = ["slot"] + list(result.classes) + ["average"]
    rows = [[slot] + list(result.by_class[stat][slot]) + [result.overall[stat][slot]] for slot in result.slots]
    return header, rows


def slot_output_sizes(model: nn.Module, input_shape: Sequence[int]) -> dict[int, int]:
    """Activations each slot computes per image (its output's elements for one image, summed over its uses where
    one slot is called more than once: relulab.zoo.slotify's module-only fallback; 0 where the example does not
    reach the slot, as an activation module the forward never calls)."""
    return {index: sum(math.prod(shape) for shape in shapes)
            for index, shapes in slot_outputs(model, input_shape).items()}


# ---------------------------------------------------------------- slot names

SLOT_NAMES = "slot_names"  # the key of a run's data summary that holds its model's slot names


def slot_names(model: nn.Module) -> dict[int, str]:
    """{slot number: name} of the model's named slots (relulab.slotify's, the CIFAR nets': `layer1.0.relu2`);
    empty for relulab's seed models, whose slots have numbers only."""
    return {s.index: s.name for s in slots_of(model) if s.name}


def slot_text(slot, names: dict[int, str], prefix: str = "") -> str:
    """A slot as the report names it: its number, and its name where the model has one ('3 (layer1.0.relu2)';
    `prefix` 'slot ': 'slot 3 (layer1.0.relu2)'). relulab's seed models' slots have numbers only: '3'."""
    name = names.get(slot) if slot is not None else None
    return f"{prefix}{slot}" + (f" ({name})" if name else "")


def stored_slot_names(data) -> dict[int, str]:
    """The slot names a run's data summary holds (`SLOT_NAMES`, JSON keys are strings); {} where it holds none,
    or holds something else than slot numbers and names (a damaged store shows numbers, it does not fail)."""
    found = data.get(SLOT_NAMES) if isinstance(data, dict) else None
    if not isinstance(found, dict):
        return {}
    names = {}
    for key, name in found.items():
        if isinstance(name, str) and str(key).isdigit():
            names[int(key)] = name
    return dict(sorted(names.items()))  # slot order (the JSON has them in its keys' text order: 1, 10, 11, ...)
