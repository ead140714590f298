"""relulab's per-slot statistics in the user's own training loop: `watch`, a context manager (in the style of
fastai's `Hooks`) around any loop.

    with relulab.watch(model, every=50, classes=10) as stats:
        for x, y in loader:
            stats.labels(y)                     # optional: per-class statistics of the batches it records
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
    stats.records                               # a dict per number: step, epoch, stat, slot, class, ..., value
    stats.frame()                               # the same as a pandas DataFrame
    with Store("runs/mine.sqlite") as store:
        stats.save(store, name="mine")          # then `relulab report runs/mine.sqlite` shows them

What it watches: the model's relulab slots where it has them (`relulab.slotify`'s, relulab's own models), else
its activation modules (nn.ReLU, nn.GELU, ...: the activation registry's `TORCH_MODULES`), numbered from 1 in
the order the first forward pass meets them and named by their path, as `slotify(model, x, trace=False)`
numbers and names them. Functional calls (F.relu in a forward) are seen only in a slotified model; a module
used twice in a forward pass is one slot whose last use counts (as relulab's probes see it).

When: `every=N` records the training-mode forward passes of `model` number 0, N, 2N, ... (counted from 0 when
the block starts; eval-mode passes are not counted); `stats.record_next(step=..., epoch=...)` records the next
one whatever `every` says (every=None: only those), e.g. once an epoch.

What: every statistic of relulab.probes.statistics (`STATS`: ratio_num, ratio_sum, sign entropy, std, dead
fraction, ...), computed as `relulab.probes.measure` computes it, on the batch of that forward pass and the
weights it ran with, in whatever mode the loop runs (training mode: dropout on, batch norm on batch statistics;
`relulab probe` measures in eval mode, so the two agree where the model has neither). The gradient statistics
(`grad_norm`, `grad_norm_in`) come from backward hooks on the slots' tensors, so they are gradients of the loss
the LOOP backpropagates: equal to relulab probe's (the summed cross-entropy of the images) where the loop's loss
is that, 1/B of it for a mean over a batch of B; NaN where the loop does no backward pass. Per class where the
pass's labels are given (`stats.labels(y)` before the forward); without labels every image is in one class.
Everything is reduced on the device: a record's numbers reach the host in one copy when it is finished (at the
next forward pass of `model`, after the loop's backward pass, or when the block ends).

Logging: `log=callable(metrics, step)` gets each finished record's overall values as
{"relulab/<stat>/slot<N>": value} (undefined ones, NaN, left out); a Lightning logger's `log_metrics` fits.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from relulab.core.env import provenance
from relulab.core.errors import UserError
from relulab.core.util import check_name
from relulab.probes.statistics import (SLOT_NAMES, STATS, ProbeResult, SlotBatch, _finish, _reduce_into,
                                       check_stats, stat_names)
from relulab.training.specs import History
from relulab.zoo.activations import module_activation
from relulab.zoo.models import Slot

Tensor = torch.Tensor
Logger = Callable[[dict, int], None]
ORIGIN = "relulab.watch"  # the origin of the experiments `SlotWatch.save` writes (relulab run's is a spec file)
WATCH_PART = "watch"  # the one part of such an experiment
# The key of a saved watched run's data summary that holds the watch (its `every`, the recorded steps): readers
# (the report) tell such a run by it, and know its slot_stats "epoch" column holds training steps.
WATCHED = "watched"
RECORD_COLUMNS = ("step", "epoch", "stat", "slot", "slot_name", "class", "class_name", "images", "value")


@dataclass
class WatchRecord:
    """The statistics of one recorded forward pass (with its backward pass, for the gradient statistics)."""

    step: int
    epoch: Optional[int]
    result: ProbeResult


@dataclass
class _Pending:
    """The record being measured: totals per (statistic, watched module's position), per class, on the device."""

    step: int
    epoch: Optional[int]
    labels: Optional[Tensor]
    groups: int
    class_names: list[str]
    classes: Optional[Tensor] = None  # each image's class, set by the first slot the batch reaches
    counts: Optional[Tensor] = None  # images per class
    totals: dict = field(default_factory=dict)
    grad_handles: dict = field(default_factory=dict)  # (position, "in" | "out") -> the hook on its last use


def watched_slots(model: nn.Module) -> tuple[list[nn.Module], list[Slot]]:
    """(the modules to hook, the slot each one is): a model's Slots, else its activation modules (each with a
    Slot numbered 0 until the first forward pass says their order, named by its path)."""
    slots = sorted((m for m in model.modules() if isinstance(m, Slot)), key=lambda s: s.index)
    if slots:
        return list(slots), list(slots)
    found = [(m, module_activation(m), path) for path, m in model.named_modules()]
    found = [(m, spec, path) for m, spec, path in found if spec is not None]
    if not found:
        raise UserError(f"watch.model: {type(model).__name__} has no activation module (nn.ReLU, nn.GELU, ...) nor "
                        "relulab slot; activations called as functions (F.relu) are slots of "
                        "relulab.slotify(model, example_input): watch that")
    return [m for m, _, _ in found], [Slot(0, spec, path) for _, spec, path in found]


class SlotWatch:
    """relulab's per-slot statistics of `model` during the user's training (see the module's docstring); made by
    `watch`. `schedule=False`: no hooks on the model's own forward; whoever drives it (the Lightning callback)
    calls `begin` and `finish` around the passes to record."""

    def __init__(self, model: nn.Module, every: Optional[int] = 50, stats: Optional[Sequence[str]] = None,
                 classes: Union[int, Sequence[str], None] = None, log: Optional[Logger] = None,
                 prefix: str = "relulab", schedule: bool = True):
        if not isinstance(model, nn.Module):
            raise UserError(f"watch.model: expected a torch.nn.Module, got {type(model).__name__}")
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise UserError(f"watch.every: expected a number of forward passes >= 1 (or None), got {every!r}")
        if log is not None and not callable(log):
            raise UserError(f"watch.log: expected a callable(metrics, step), got {type(log).__name__}")
        self.model, self.every, self.log, self.prefix, self.schedule = model, every, log, prefix, schedule
        self.stats = check_stats(stat_names() if stats is None else stats, "watch.stats")
        self.class_names = _class_names(classes)
        self.modules, self.slots = watched_slots(model)
        self._numbered = all(s.index > 0 for s in self.slots)
        self._order: dict[int, None] = {}  # positions in the order the first pass met them
        self._results: list[WatchRecord] = []
        self._pending: Optional[_Pending] = None
        self._collecting = False
        self._inputs: dict[int, Tensor] = {}
        self._handles: list = []
        self._passes = 0  # training-mode forward passes of `model` since the block started
        self._next: Optional[tuple[Optional[int], Optional[int]]] = None  # record_next's (step, epoch)
        self._next_labels: Optional[Tensor] = None
        self.epoch: Optional[int] = None  # stamped on the records; set it where the loop counts epochs

    # ---------------------------------------------------------------- the block

    def attach(self) -> "SlotWatch":
        if self._handles:
            raise UserError("watch: this watch is attached already (one `with` block at a time)")
        for position, module in enumerate(self.modules):
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(position)))
            self._handles.append(module.register_forward_hook(self._forward_hook(position)))
        if self.schedule:
            self._handles.append(self.model.register_forward_pre_hook(self._on_pass))
            self._handles.append(self.model.register_forward_hook(self._after_pass))
        self._passes = 0
        return self

    def detach(self) -> None:
        self.finish()
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "SlotWatch":
        return self.attach()

    def __exit__(self, *exc) -> bool:
        self.detach()
        return False

    # ---------------------------------------------------------------- what the loop tells it

    def labels(self, y: Tensor) -> None:
        """The labels of the next forward pass's images (used if that pass is recorded): per-class statistics."""
        if not isinstance(y, Tensor) or y.dim() != 1 or y.is_floating_point():
            raise UserError(f"watch.labels: expected a 1-d tensor of class numbers, got "
                            f"{type(y).__name__ if not isinstance(y, Tensor) else f'shape {list(y.shape)} {y.dtype}'}")
        self._next_labels = y.detach()

    def record_next(self, step: Optional[int] = None, epoch: Optional[int] = None) -> None:
        """Record the next training-mode forward pass of the model whatever `every` says, as `step` (default: its
        number) and `epoch` (default: `self.epoch`)."""
        self._next = (step, epoch)

    # ---------------------------------------------------------------- the schedule

    def _on_pass(self, model: nn.Module, inputs) -> None:
        self.finish()  # the previous pass's backward is done by now
        labels, self._next_labels = self._next_labels, None
        if not model.training:
            return
        step = self._passes
        self._passes += 1
        if self._next is not None or (self.every is not None and step % self.every == 0):
            wanted, self._next = self._next or (None, None), None
            self.begin(step if wanted[0] is None else wanted[0], wanted[1], labels)

    def _after_pass(self, model: nn.Module, inputs, output) -> None:
        self._collecting = False  # the pass is over; its gradients may still come

    def begin(self, step: int, epoch: Optional[int] = None, labels: Optional[Tensor] = None) -> None:
        """Record the forward pass that follows (the slots' tensors until `finish`) as `step`."""
        self.finish()
        groups, names = self._groups(labels)
        self._pending = _Pending(int(step), self.epoch if epoch is None else epoch, labels, groups, names)
        self._collecting = True

    def _groups(self, labels: Optional[Tensor]) -> tuple[int, list[str]]:
        if labels is None or not len(labels):
            return 1, self.class_names[:1] if self.class_names else ["0"]
        low, high = (int(v) for v in torch.aminmax(labels))  # one small copy per record
        if self.class_names is None:
            return max(high + 1, 1), [str(c) for c in range(max(high + 1, 1))]
        if low < 0 or high >= len(self.class_names):
            raise UserError(f"watch.labels: labels {low}..{high} for classes 0..{len(self.class_names) - 1} "
                            "(watch.classes)")
        return len(self.class_names), list(self.class_names)

    # ---------------------------------------------------------------- the hooks

    def _pre_hook(self, position: int):
        def hook(module, inputs):
            if not self._numbered:
                self._order.setdefault(position)
            if not self._collecting or not inputs or not isinstance(inputs[0], Tensor):
                return
            x = inputs[0]
            # An in-place activation overwrites its input: keep a copy (on the device) of what it was.
            self._inputs[position] = x.detach().clone() if getattr(module, "inplace", False) else x.detach()
            if torch.is_grad_enabled() and x.requires_grad and self._wants_grad("input"):
                self._hook_grad(position, "in", x)
        return hook

    def _forward_hook(self, position: int):
        def hook(module, inputs, output):
            x = self._inputs.pop(position, None)
            if x is None or not isinstance(output, Tensor):
                return
            self._measure(position, SlotBatch(x, output.detach(), self.slots[position]), "")
            if torch.is_grad_enabled() and output.requires_grad and self._wants_grad("output"):
                self._hook_grad(position, "out", output)
        return hook

    def _wants_grad(self, which: str) -> bool:
        return any(STATS[n].grad == which for n in self.stats)

    def _hook_grad(self, position: int, which: str, tensor: Tensor) -> None:
        pending = self._pending
        old = pending.grad_handles.pop((position, which), None)
        if old is not None:  # the slot is used again in this pass: its last use counts
            old.remove()

        def on_grad(grad: Tensor) -> None:
            if pending is self._pending:  # not a record finished already
                slot = self.slots[position]
                batch = SlotBatch(grad, grad, slot, grad if which == "out" else None, grad if which == "in" else None)
                self._measure(position, batch, "output" if which == "out" else "input")

        pending.grad_handles[(position, which)] = tensor.register_hook(on_grad)

    def _measure(self, position: int, batch: SlotBatch, grad: str) -> None:
        """The statistics of one slot that need `grad` ("": none) on this batch, reduced per class into the
        record's totals (replacing an earlier use's: the last use counts)."""
        p = self._pending
        if p.classes is None:
            p.classes = self._classes(p, batch.x)
            p.counts = torch.zeros(p.groups, dtype=torch.float64, device=batch.x.device).index_add_(
                0, p.classes, torch.ones(len(p.classes), dtype=torch.float64, device=batch.x.device))
        if len(batch.x) != len(p.classes):
            return  # not a tensor with the batch first (an activation over another dimension): left out
        with torch.no_grad():
            for name in self.stats:
                stat = STATS[name]
                if stat.grad != grad:
                    continue
                comps = stat.fn(batch)
                p.totals[name, position] = None if comps is None else _reduce_into(None, comps, p.classes, p.groups,
                                                                                    stat.reduce)

    def _classes(self, p: _Pending, x: Tensor) -> Tensor:
        if p.labels is None:
            return torch.zeros(len(x), dtype=torch.long, device=x.device)
        if len(p.labels) != len(x):
            raise UserError(f"watch.labels: {len(p.labels)} labels for a batch of {len(x)} images")
        return p.labels.to(x.device, non_blocking=True).long()

    # ---------------------------------------------------------------- finishing a record

    def _number(self) -> None:
        """Number the activation modules by the order the first pass met them (then the others)."""
        if self._numbered:
            return
        order = list(self._order) + [i for i in range(len(self.slots)) if i not in self._order]
        for index, position in enumerate(order, start=1):
            self.slots[position].index = index
        self._numbered = True

    def finish(self) -> Optional[WatchRecord]:
        """Finish the record being measured (its numbers to the host, in one copy), log it; None if none was."""
        p, self._pending, self._collecting = self._pending, None, False
        self._inputs.clear()
        if p is None:
            return None
        for handle in p.grad_handles.values():
            handle.remove()
        if p.counts is None:
            return None  # the pass reached no slot
        self._number()
        keys = [(n, i) for n in self.stats for i in range(len(self.slots))]
        device = p.counts.device
        table = torch.stack([_finish(STATS[n], p.totals.get((n, i)), p.counts, p.groups, device) for n, i in keys])
        values = table.cpu().tolist()
        result = ProbeResult(list(self.stats), sorted(s.index for s in self.slots), p.class_names,
                             [int(c) for c in p.counts.cpu().tolist()])
        for (name, i), row in zip(keys, values):
            result.overall.setdefault(name, {})[self.slots[i].index] = row[-1]
            result.by_class.setdefault(name, {})[self.slots[i].index] = row[:-1]
        record = WatchRecord(p.step, p.epoch, result)
        self._results.append(record)
        if self.log is not None:
            self.log(self.metrics(record), record.step)
        return record

    # ---------------------------------------------------------------- what it gives

    @property
    def results(self) -> list[WatchRecord]:
        """The records so far (finishing the one being measured, if any: call it after the backward pass)."""
        if self._pending is not None and not self._collecting:
            self.finish()
        return list(self._results)

    @property
    def slot_names(self) -> dict[int, str]:
        return {s.index: s.name for s in self.slots if s.name}

    @property
    def records(self) -> list[dict]:
        """Every number as a dict of RECORD_COLUMNS (class -1, class_name 'average': all the batch's images)."""
        names = self.slot_names
        out = []
        for record in self.results:
            r = record.result
            for stat, slot, cls, class_name, images, value in r.store_rows():
                out.append(dict(zip(RECORD_COLUMNS, (record.step, record.epoch, stat, slot, names.get(slot),
                                                     cls, class_name, images, value))))
        return out

    def frame(self):
        """`records` as a pandas DataFrame (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise UserError("watch.frame: needs pandas (pip install pandas); `records` has the same rows as dicts") \
                from None
        return pd.DataFrame(self.records, columns=list(RECORD_COLUMNS))

    def metrics(self, record: WatchRecord) -> dict[str, float]:
        """A record's values over all its images, as {"<prefix>/<stat>/slot<N>": value}; undefined ones left out."""
        return {f"{self.prefix}/{stat}/slot{slot}": value for stat, by_slot in record.result.overall.items()
                for slot, value in by_slot.items() if not math.isnan(value)}

    # ---------------------------------------------------------------- the store

    def save(self, store, name: str = "watch", config: Optional[str] = None, seed: int = 0) -> str:
        """Write the records to `store` (a relulab.store.Store opened to write) as the run `config` (default: the
        model's class name), seed `seed`, of the experiment `name`, so that `relulab report` shows them: every
        record's values over its images in `slot_stats` (by step), the last record per class in `run_probes`
        (probe set 'training batch, step N'). Returns the run's key. Several models (configs) or seeds can go
        into one experiment; an experiment that `relulab run` wrote is refused."""
        return save_watched(store, self, name, config or model_name(self.model), seed)


def watch(model: nn.Module, every: Optional[int] = 50, stats: Optional[Sequence[str]] = None,
          classes: Union[int, Sequence[str], None] = None, log: Optional[Logger] = None,
          prefix: str = "relulab") -> SlotWatch:
    """relulab's per-slot statistics of `model` every `every` training forward passes, in a `with` block around
    any training loop (the module's docstring). `stats`: names of relulab.probes.statistics (default: all);
    `classes`: their number or names (default: from the labels given); `log`: callable(metrics, step)."""
    return SlotWatch(model, every, stats, classes, log, prefix)


def _class_names(classes) -> Optional[list[str]]:
    if classes is None:
        return None
    if isinstance(classes, int) and not isinstance(classes, bool):
        if classes < 1:
            raise UserError(f"watch.classes: expected a number of classes >= 1 or their names, got {classes}")
        return [str(c) for c in range(classes)]
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes):
        return list(classes)
    raise UserError(f"watch.classes: expected a number of classes >= 1 or a list of their names, got {classes!r}")


def model_name(model: nn.Module) -> str:
    return type(model).__name__.removeprefix("Slotted")


# ---------------------------------------------------------------- writing a watch to a store


@dataclass
class _WatchedSpec:
    """What the run row's spec holds for a watched model: its class and the watch, not a relulab RunSpec (the
    model and the loop are the user's)."""

    model: dict
    watch: dict

    def to_dict(self) -> dict:
        return {"model": self.model, "watch": self.watch}


@dataclass
class _WatchedResult:
    """A watched run as `Store.record` reads a training result (relulab.training.specs.RunResult's fields): no
    epochs of relulab's (the loop is the user's), so no accuracy."""

    spec: _WatchedSpec
    seed: int
    history: History
    params: int
    data: dict
    provenance: dict


@dataclass
class _WatchedRun:
    """A finished run as `Store.record` takes it (relulab.store.Finished's fields; probes may not import the
    store package, which the caller hands in)."""

    key: str
    experiment: str
    part: str
    variant: str
    result: _WatchedResult
    slot_stats: dict  # {step: {stat: {slot: value}}}
    weights: object = None


def watched_key(name: str, config: str, seed: int) -> str:
    """The run key of a watched model: stable, so saving it twice is refused rather than stored twice."""
    return "watch-" + hashlib.sha256(json.dumps([name, config, seed]).encode()).hexdigest()[:16]


def save_watched(store, watched: SlotWatch, name: str, config: str, seed: int) -> str:
    if not all(hasattr(store, m) for m in ("save_plan", "record", "save_run_probes")) \
            or getattr(store, "read_only", True):
        raise UserError(f"watch.save.store: expected a relulab.store.Store opened to write "
                        f"(Store(path)), got {type(store).__name__}")
    check_name(name, "watch.save.name")
    check_name(config, "watch.save.config")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"watch.save.seed: expected an integer >= 0, got {seed!r}")
    records = watched.results
    if not records:
        raise UserError("watch.save: nothing recorded yet (no training-mode forward pass was recorded)")
    key = watched_key(name, config, seed)
    if store.done_keys([key]):
        raise UserError(f"watch.save: {config} seed {seed} of experiment {name} is in {store.path} already "
                        "(watch.save.config, watch.save.seed: save under another)")
    spec = _WatchedSpec({"class": f"{type(watched.model).__module__}.{type(watched.model).__qualname__}"},
                        {"every": watched.every, "stats": list(watched.stats), "classes": watched.class_names})
    _save_plan(store, name, config, seed, key, spec)
    last = records[-1]
    store.ensure_probe_search_tables()
    # The last record's per-class numbers, under the run's epoch count (0: its epochs are not relulab's) and a
    # probe set that says which batch it was; before the run row, as relulab probe writes them.
    store.save_run_probes(key, f"training batch, step {last.step}", 0, last.result.store_rows())
    param = next(watched.model.parameters(), None)
    data = {"val_is_test": False, SLOT_NAMES: {str(k): v for k, v in watched.slot_names.items()},
            WATCHED: {"every": watched.every, "records": len(records), "steps": [r.step for r in records]}}
    result = _WatchedResult(spec, seed, History(), sum(p.numel() for p in watched.model.parameters()), data,
                            provenance(param.device if param is not None else torch.device("cpu")))
    slot_stats = {r.step: r.result.overall for r in records}
    store.record(_WatchedRun(key, name, WATCH_PART, config, result, slot_stats))
    return key


def _save_plan(store, name: str, config: str, seed: int, key: str, spec: _WatchedSpec) -> None:
    """The experiment's plan with this run added (the runs saved before under `name` kept)."""
    variants, rows = [], []
    if name in store.experiment_names():
        old = store.load_experiment(name)
        if old["origin"] != ORIGIN:
            raise UserError(f"watch.save.name: experiment {name} in {store.path} was not written by relulab.watch "
                            "(it is a relulab run's): save under another name")
        variants = [v for p in old["parts"] for v in p["variants"]]
        rows = [{k: r[k] for k in ("experiment", "part", "variant", "seed", "run_key", "position", "config",
                                   "baseline", "spec_json")} for r in old["plan"]]
    if config not in {v["name"] for v in variants}:
        variants.append({"name": config, "config": config, "grid": {}})
    rows.append({"experiment": name, "part": WATCH_PART, "variant": config, "seed": seed, "run_key": key,
                 "position": len(rows), "config": config, "baseline": None,
                 "spec_json": json.dumps(spec.to_dict(), sort_keys=True)})
    seeds = sorted({r["seed"] for r in rows})
    part = {"name": WATCH_PART, "description": "", "seeds": seeds, "baseline": None, "probes": list(spec.watch["stats"]),
            "probe_size": None, "analyses": {}, "val_is_test": False, "variants": variants}
    raw = {"name": name, "description": "Per-slot statistics recorded by relulab.watch in the user's own training "
                                        "loop (slot_stats by training step)"}
    store.save_plan(name, ORIGIN, raw, [part], rows)
