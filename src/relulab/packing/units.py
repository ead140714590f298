"""A pack's units: the models one chain of kernels (one CUDA stream) drives, a stack or one model of any kind.

`form_units` groups a pack's jobs into units as `relulab.packing.rules` says; `stack_unit` and `model_unit`
build one, with a step (`relulab.packing.steps`) for each batch size of an epoch. A unit evaluates its models,
keeps each one's best epoch and saves its state for resuming (`relulab.training.resume`).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from relulab.core.env import matmul_precision
from relulab.data import Splits
from relulab.kernels import launches
import relulab.packing.rules as rules  # as a module: benchmarks swap rules in it (bench_speed.fused_path)
from relulab.packing.functional import FunctionalStack
from relulab.packing.fused import FusedMLP
from relulab.packing.stacked_cnn import StackedCNN
from relulab.packing.stacked_mlp import StackedMLP
from relulab.packing.steps import FusedPackStep, GraphedStep, ModelStep, PackStep, flatten_parameters, put_back
from relulab.training import resume
from relulab.training.checkpoints import state_to_cpu
from relulab.training.loop import build_for, evaluate
from relulab.training.schedules import learning_rates
from relulab.training.specs import Job, autocast_dtype, float32_products
from relulab.zoo.models import SlotNet, model_entry, parameter_count
from relulab.zoo.optim import StackedOptimizer

# The stack class for each kind of model entry (relulab.zoo.models.ModelEntry.packs) that stacks.
STACKS = {"stack": StackedMLP, "fuse": StackedMLP, "conv-stack": StackedCNN, "vmap": FunctionalStack}


@torch.no_grad()
def evaluate_stack(stack: StackedMLP | StackedCNN | FunctionalStack, x: torch.Tensor, y: torch.Tensor, batch: int,
                   amp: Optional[torch.dtype] = None) -> tuple[list[float], list[float]]:
    """Per-model (loss, accuracy) on shared inputs, one read-back at the end."""
    loss = torch.zeros(stack.k, device=x.device)
    correct = torch.zeros(stack.k, device=x.device, dtype=torch.long)
    x = x.flatten(1) if stack.flat_input else x
    # What the kernels can index: 16 seed-cnns' activations at batch 2048 are just within the Triton kernels' reach,
    # 64 resnet20s' at batch 2048 one value past cuDNN's.
    batch = min(batch, stack.largest_batch(x.shape[1:]))
    for start in range(0, len(x), batch):
        with torch.autocast(x.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            logits = stack.forward(stack.params, x[start:start + batch], training=False).float()
        target = y[start:start + batch].unsqueeze(0).expand(stack.k, -1)
        loss += F.cross_entropy(logits.transpose(1, 2), target, reduction="none").sum(1)
        correct += (logits.argmax(2) == target).sum(1)
    n = max(1, len(x))
    # Divide on the host, as train.evaluate does: a float32 ratio would differ from a single run's in the 8th digit.
    return [v / n for v in loss.tolist()], [c / n for c in correct.tolist()]


class Unit:
    """Models driven by one chain of kernels (one CUDA stream): a stack of MLPs, or one model of any kind."""

    def __init__(self, jobs: Sequence[Job], models: list[SlotNet], device: torch.device):
        self.jobs, self.models = list(jobs), models
        self.amp = [autocast_dtype(job.spec, device) for job in jobs]
        self.products = float32_products(jobs[0].spec)  # one for the unit: precision is part of stack_key
        self.totals = (torch.zeros(len(jobs), device=device), torch.zeros(len(jobs), device=device))
        self.steps: dict[int, GraphedStep] = {}
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.stack: Optional[StackedMLP | StackedCNN | FunctionalStack] = None
        self.optimizer: Optional[StackedOptimizer] = None
        self.learning_rates: Optional[torch.Tensor] = None  # (steps, K, 1): each step's rates, where scheduled
        self.compiled = False  # whether the unit's full-batch step went through torch.compile
        self.best: list[Optional[tuple[int, object]]] = [None] * len(jobs)  # (epoch, snapshot) per model

    def capture(self) -> None:
        pool = None  # one memory pool per unit: graphs on different streams may run at once
        for step in self.steps.values():
            with matmul_precision(self.products):  # the graph keeps the kernels chosen now
                step.capture(pool, self.stream)
            pool = step.graph.pool()

    @property
    def launches_triton(self) -> bool:
        """Whether the unit runs relulab's Triton kernels: a seed-cnn stack on them, or the fused MLP step."""
        return bool(getattr(self.stack, "triton_kernels", False)) or getattr(self.stack, "fused", None) is not None

    def record_kernels(self, x: torch.Tensor, y: torch.Tensor) -> list[launches.Launch]:
        """The kernel launches of one step of each batch size and of an evaluation on (x, y), noted and not made
        (`relulab.kernels.launches.recording`); everything the steps change is put back as it was."""
        with put_back(self.state_tensors()), matmul_precision(self.products), launches.recording() as noted:
            for step in self.steps.values():
                step.dry_run()
            self.evaluate(x, y, len(x))
        return noted

    def schedule(self, steps_per_epoch: int) -> None:
        """Give the unit its models' learning rate at every step, where one of them has a schedule: a table on
        the device, a row of which is copied into the optimizer's rates before each step (no host sync)."""
        jobs = self.jobs
        if all(job.spec.train.schedule is None for job in jobs):
            return
        rates = [learning_rates(job.spec.train.optimizer.resolved_lr(), job.spec.train.schedule, steps_per_epoch,
                                job.spec.train.epochs) for job in jobs]
        self.learning_rates = torch.tensor(rates, dtype=self.optimizer.lr.dtype,
                                           device=self.optimizer.lr.device).T.unsqueeze(2).contiguous()

    def augment_with(self, generators: list[torch.Generator], image_shape: tuple) -> None:
        """Augment each model's batches with its own generator, where its recipe says (train.augment)."""
        specs = [job.spec.train.augment for job in self.jobs]
        specs = [spec if spec is not None and (spec.crop_padding or spec.flip) else None for spec in specs]
        if any(spec is not None for spec in specs):
            for step in self.steps.values():
                step.use_augmentation([(spec, g, image_shape) for spec, g in zip(specs, generators)])

    def step(self, order: torch.Tensor, start: int, stop: int, number: int = 0) -> None:
        """Train on the batch [start, stop) of `order`; `number` counts the run's steps from 0 (the schedule's)."""
        index = order[:, start:stop] if self.stack is not None else order[0, start:stop]
        with torch.cuda.stream(self.stream) if self.stream is not None else nullcontext(), \
                matmul_precision(self.products):
            if self.learning_rates is not None:
                self.optimizer.lr.copy_(self.learning_rates[number])
            self.steps[stop - start](index)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch: int) -> list[tuple[float, float]]:
        with matmul_precision(self.products):
            if self.stack is not None:
                return list(zip(*evaluate_stack(self.stack, x, y, batch, self.amp[0])))
            return [evaluate(self.models[0], x, y, batch, self.amp[0])]

    def finish(self) -> None:
        if self.stack is not None:
            self.stack.unstack_into(self.models)

    def keep_best(self, k: int, epoch: int) -> None:
        """Model k's weights now, as those of its best epoch so far (a copy on the device)."""
        if self.stack is not None:
            snapshot = self.stack.model_rows(k)
        else:
            snapshot = {name: t.detach().clone() for name, t in self.models[k].state_dict().items()}
        self.best[k] = (epoch, snapshot)

    def state_tensors(self) -> list[torch.Tensor]:
        """Everything training changes in place in this unit: weights, batch norm statistics, optimizer state
        (the steps of all batch sizes share them)."""
        return next(iter(self.steps.values())).state()

    def saved(self) -> dict:
        """This unit's training state as plain data and CPU tensors (relulab.training.resume)."""
        best = [None if b is None else {"epoch": b[0], "tensors": resume.to_cpu(_snapshot_tensors(b[1]))}
                for b in self.best]
        return {"tensors": resume.to_cpu(self.state_tensors()), "best": best}

    def restore(self, state: dict) -> None:
        resume.copy_into(self.state_tensors(), state["tensors"])
        for k, saved in enumerate(state["best"]):
            if saved is not None:
                self.keep_best(k, saved["epoch"])  # a snapshot of the right structure, then the saved values
                resume.copy_into(_snapshot_tensors(self.best[k][1]), saved["tensors"])

    def best_state(self, k: int, last_epoch: Optional[int]) -> Optional[dict[str, torch.Tensor]]:
        """Model k's state dict at its best epoch, on the CPU; None where that is the last epoch (the final model).
        Call after `finish`."""
        if self.best[k] is None or self.best[k][0] == last_epoch:
            return None
        snapshot = self.best[k][1]
        if self.stack is None:
            return state_to_cpu(snapshot)
        # The best rows go into model k while its state dict is read, then its final rows back (the stack still
        # holds them after `finish`): no copy of the model on the device (a deep copy of a 50-layer model took
        # longer than the rest of this).
        model = self.models[k]
        self.stack.write_model(model, snapshot)
        try:
            return state_to_cpu(model.state_dict())
        finally:
            self.stack.write_model(model, self.stack.model_rows(k, copy=False))


def _snapshot_tensors(snapshot) -> list[torch.Tensor]:
    """The tensors of a best-epoch snapshot: a stack's model rows, or a model's state dict, in a fixed order."""
    if isinstance(snapshot, dict):
        return list(snapshot.values())
    params, running = snapshot
    if isinstance(running, dict):  # a FunctionalStack's buffers
        return [params, *running.values()]
    return [params, *(t for pair in running for t in pair)]


def stack_unit(jobs: Sequence[Job], splits: Splits, device: torch.device, sizes: list[int]) -> Unit:
    """A stack's unit: jobs of one stack key (`rules.stack_key`, `rules.cnn_stack_key` or
    `rules.functional_stack_key`), as one stacked model of the class the model's entry packs as (STACKS)."""
    unit = Unit(jobs, [build_for(job.spec, splits, job.seed, device) for job in jobs], device)
    kind = STACKS[model_entry(jobs[0].spec.model.name).packs]
    if kind is StackedCNN:
        unit.stack = StackedCNN(unit.models, triton_kernels=device.type == "cuda" and unit.amp[0] == torch.bfloat16)
    else:
        unit.stack = kind(unit.models)
    step = PackStep
    if rules.fusable(jobs[0]):  # then every job of the stack is (it is part of stack_key)
        unit.stack.fused = FusedMLP(unit.models, unit.stack.sizes, unit.stack.linear_layers(), device,
                                    precision=unit.products)
        step = FusedPackStep
    optimizer = unit.optimizer = StackedOptimizer(unit.stack.params, [job.spec.train.optimizer for job in jobs])
    x = splits.x_train.flatten(1) if unit.stack.flat_input else splits.x_train
    unit.compiled = step is PackStep and rules.compiles_stack(jobs, device)
    # As for single models, only the full batch is compiled; the epoch's short last batch runs as it is.
    unit.steps = {size: step(unit.stack, optimizer, x, splits.y_train, size, jobs, unit.totals,
                             unit.compiled and size == max(sizes)) for size in sizes}
    return unit


def model_unit(job: Job, splits: Splits, device: torch.device, sizes: list[int], compiled: bool = False) -> Unit:
    """One model's unit; with `compiled`, its full-batch step is compiled (the epoch's one short last batch
    runs uncompiled rather than pay a second compilation for another shape)."""
    unit = Unit([job], [build_for(job.spec, splits, job.seed, device)], device)
    flat = flatten_parameters(unit.models[0])
    optimizer = unit.optimizer = StackedOptimizer(flat, [job.spec.train.optimizer])
    unit.steps = {size: ModelStep(unit.models[0], flat, optimizer, splits.x_train, splits.y_train, size, job,
                                  unit.totals, 0, unit.amp[0], compiled and size == max(sizes)) for size in sizes}
    unit.compiled = compiled
    return unit


def _stack_pays(job: Job, splits: Splits) -> bool:
    return rules.functional_stack_pays(parameter_count(job.spec.model, splits.input_shape, splits.num_classes))


def form_units(jobs: Sequence[Job], splits: Splits, device: torch.device, sizes: list[int],
               max_stack: Optional[int] = None, stack_cnns: bool = False, stack_functional: bool = False
               ) -> list[Unit]:
    """Stack MLPs that can share a stack (up to `max_stack` each, as `rules.most_to_a_stack`
    says), seed-cnns too with `stack_cnns`, and "vmap" models with `stack_functional`; every other job is a
    unit of its own."""
    stacks: dict[tuple, list[Job]] = {}
    units = []
    for job in jobs:
        key = rules.stack_key(job) or (rules.cnn_stack_key(job) if stack_cnns else None) or \
            (rules.functional_stack_key(job) if stack_functional and _stack_pays(job, splits) else None)
        if key is None:
            units.append(model_unit(job, splits, device, sizes, rules.compiles(job, jobs, device)))
        else:
            stacks.setdefault(key, []).append(job)
    for key, members in list(stacks.items()):
        if not rules.functional_stack_runs(members, device):
            del stacks[key]
            units += [model_unit(job, splits, device, sizes, rules.compiles(job, jobs, device)) for job in members]
    for members in stacks.values():
        # A fused stack applies each activation to a run of neighbouring models: put equal placements together.
        members.sort(key=lambda job: (job.spec.model.activation, sorted(job.spec.model.slots.items())))
        start = 0
        most = rules.most_to_a_stack(members[0], max_stack, splits.input_shape, splits.num_classes)
        for size in rules.stack_sizes(len(members), most):
            chunk = members[start:start + size]
            if size == 1 and rules.functional_stack_key(chunk[0]) is not None:  # vmap over one model only costs
                units.append(model_unit(chunk[0], splits, device, sizes, rules.compiles(chunk[0], jobs, device)))
            else:
                units.append(stack_unit(chunk, splits, device, sizes))
            start += size
    return units
