"""Train many small models at once.

The models here are too small to keep a GPU busy: at batch 32 a deep-mlp layer is a
32x100x100 matrix product, and the time goes to launching kernels. `train_together`
trains a group of jobs that share a schedule (batch size, epochs) at the same time, in
*units*, each driven by its own CUDA stream:

- a *stack* unit holds K MLPs of the same shape (different seeds, initializers,
  learning rates) and runs every layer for all of them in one batched kernel; on CUDA
  in bf16, K seed-cnns stack too (`relulab.stacked_cnn`);
- any other model is a unit of its own;
- on CUDA each unit's whole training step (gather the batch, forward, backward,
  update, accumulate metrics) is captured once in a CUDA graph and replayed, so a step
  costs one launch instead of hundreds, and the units' graphs run side by side.

Inside a stack:

- weights of all layers and models live in one flat leaf tensor `P` of shape
  (K, n_params); each layer's weight is a view of it (`P.split`), so autograd
  delivers the whole gradient as one (K, n_params) tensor and the optimizer update
  is a handful of elementwise kernels however many layers there are;
- a Linear layer is `baddbmm` over the K models; batch norm is PyTorch's own kernel
  on a (B, K*C) view (each model's channels are separate channels to it);
- each model keeps its own batch order (its seed's generator), so a stack reproduces
  K separate runs of `relulab.train` up to float rounding (a test checks this).

Models are built exactly as `train.run` builds them (same seed, same initializer
calls), then their weights are stacked; at the end they are unstacked back into
ordinary `SlotNet`s, so results look the same as single runs.
"""
from __future__ import annotations

import copy
import importlib.util
import math
import time
from contextlib import nullcontext
from functools import partial
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from relulab.packing import fused
from relulab.training import resume
from relulab.training.resume import Resume
from relulab.data import Splits
from relulab.core.env import matmul_precision, provenance, resolve_device
from relulab.zoo.models import Slot, SlotNet, keras_param_count
from relulab.zoo.optim import kernel_weights, weight_penalty
from relulab.packing.stacked_cnn import StackedCNN
from relulab.packing.stacking import Op, StackedWeights
from relulab.training.loop import build_for, epoch_batches, evaluate, run
from relulab.training.specs import (CONV_MODELS, EpochRecord, History, Job, RunResult, arithmetic, autocast_dtype,
                                    float32_products)

PACKABLE_MODELS = ("deep-mlp", "bn-mlp")
PACKABLE_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "rmsprop")


def stack_key(job: Job) -> Optional[tuple]:
    """MLP jobs with equal keys can share a stack: everything that shapes the computation
    matches (widths, activations, batch norm, optimizer rule, penalties, precision); seeds,
    initializers and learning rates may differ, and so may activations in a fused stack
    (`relulab.fused`). None: not stackable."""
    spec, opt = job.spec, job.spec.train.optimizer
    if spec.model.name not in PACKABLE_MODELS or opt.name not in PACKABLE_OPTIMIZERS:
        return None
    if fused.fusable(job):
        return ("fused", tuple(spec.model.widths or ()), opt.name, opt.flavour, opt.momentum, spec.train.l1,
                spec.train.l2, float32_products(spec))
    if any(a.startswith("prelu") for a in [spec.model.activation, *spec.model.slots.values()]):
        return None  # PReLU has its own parameter per model
    return (spec.model.name, tuple(spec.model.widths or ()), spec.model.activation,
            tuple(sorted(spec.model.slots.items())), spec.model.batchnorm, spec.model.bn_flavour, opt.name,
            opt.flavour, opt.momentum, spec.train.l1, spec.train.l2, spec.train.precision)


def cnn_stack_key(job: Job) -> Optional[tuple]:
    """seed-cnn jobs with equal keys can share a `StackedCNN`: same shape, optimizer rule, penalties and
    precision; seeds, initializers, learning rates and the activation in each slot may differ."""
    spec, opt = job.spec, job.spec.train.optimizer
    if spec.model.name != "seed-cnn" or opt.name not in PACKABLE_OPTIMIZERS:
        return None
    if any(a.startswith("prelu") for a in [spec.model.activation, *spec.model.slots.values()]):
        return None
    return ("cnn", tuple(spec.model.widths or ()), spec.model.batchnorm, spec.model.bn_flavour, opt.name,
            opt.flavour, opt.momentum, spec.train.l1, spec.train.l2, spec.train.precision, spec.train.compile)


def stacks_cnns(jobs: Sequence[Job], device: torch.device) -> bool:
    """Whether seed-cnns train in stacks by default: on CUDA, in bf16, where Triton is there for the kernels."""
    if device.type != "cuda" or any(autocast_dtype(job.spec, device) != torch.bfloat16 for job in jobs):
        return False
    return importlib.util.find_spec("triton") is not None  # CUDA builds of torch bring it


def schedule_key(job: Job) -> tuple:
    train = job.spec.train
    return (train.batch_size, train.epochs, train.eval_batch_size)


def pack_key(job: Job, device: torch.device) -> Optional[tuple]:
    """Jobs with equal keys can train together (`train_together`); None: this job trains alone.

    On CUDA any job whose optimizer the graphed step supports can join (its step becomes a
    CUDA graph); on the CPU only stackable MLPs gain from it."""
    if job.spec.train.optimizer.name not in PACKABLE_OPTIMIZERS:
        return None
    if device.type != "cuda" and stack_key(job) is None:
        return None
    return schedule_key(job)


class StackedMLP(StackedWeights):
    """K same-shape SlotNets as one set of stacked weights, with a batched forward."""

    flat_input = True  # the pack's steps pass (K, B, features)

    def __init__(self, models: Sequence[SlotNet]):
        super().__init__(models)
        for index, layers in enumerate(zip(*(m.body for m in models))):
            first = layers[0]
            if isinstance(first, nn.Flatten):
                continue
            if isinstance(first, (nn.Linear, nn.BatchNorm1d)):
                self._add_layer("linear" if isinstance(first, nn.Linear) else "bn", index, layers)
            elif isinstance(first, Slot):
                self._add_activation(layers)
            else:
                raise TypeError(f"cannot pack layer {type(first).__name__}")
        self._finish()
        self.fused: Optional[fused.FusedMLP] = None  # the hand-written step, for stacks that allow it

    def forward(self, params: torch.Tensor, x: torch.Tensor, training: bool) -> torch.Tensor:
        """x: (K, B, features), or (B, features) shared by all models -> logits (K, B, classes)."""
        views = params.split(self.sizes, dim=1)
        h = x if x.dim() == 3 else x.unsqueeze(0).expand(self.k, *x.shape)
        for op in self.ops:
            if op.kind == "linear":
                out_features, in_features = op.shape
                weight = views[op.weight].view(self.k, out_features, in_features)
                h = torch.baddbmm(views[op.bias].unsqueeze(1), h, weight.transpose(1, 2))
            elif op.kind == "act":
                h = self._activate(h, op, model_dim=0)
            else:
                h = self._batchnorm(h, views[op.weight], views[op.bias], op, training)
        return h

    def _batchnorm(self, h, weight, bias, op: Op, training: bool) -> torch.Tensor:
        # To PyTorch's batch norm, model k's channel c is channel k*C + c of a (B, K*C) batch.
        k, batch, channels = h.shape
        mean, var = self.running[op.running]
        flat = h.transpose(0, 1).reshape(batch, k * channels)
        out = F.batch_norm(flat, mean, var, weight.reshape(-1), bias.reshape(-1), training,
                           op.module.momentum, op.module.eps)
        return out.view(batch, k, channels).transpose(0, 1)


class StackedOptimizer:
    """The optimizers of relulab.optim, written once for stacked (K, n) weights with a per-model
    learning rate. The rules match torch.optim (flavour torch) and Keras 3 (flavour keras)."""

    def __init__(self, params: torch.Tensor, jobs: Sequence[Job]):
        opt = jobs[0].spec.train.optimizer
        self.name, self.flavour, self.momentum = opt.name, opt.flavour, opt.momentum
        self.lr = torch.tensor([[j.spec.train.optimizer.resolved_lr()] for j in jobs], device=params.device)
        self.step_count = torch.zeros((), device=params.device)  # on the device, so graphs can replay it
        self.state = {name: torch.zeros_like(params) for name in self._state_names()}

    def _state_names(self) -> list[str]:
        return {"sgd": [], "momentum": ["buf"], "nesterov": ["buf"], "adam": ["m", "v"], "rmsprop": ["v"]}[self.name]

    @torch.no_grad()
    def step(self, params: torch.Tensor, grad: torch.Tensor) -> None:
        self.step_count += 1
        getattr(self, f"_{self.name}")(params, grad)

    def _sgd(self, p, g):
        p.addcmul_(self.lr, g, value=-1)  # p - lr * g in one pass over p

    def _momentum(self, p, g):
        # torch.optim.SGD's rule (Keras' is the same for a constant learning rate); the buffer
        # starts at zero, so the first step sets it to the gradient as torch does.
        buf = self.state["buf"]
        buf.mul_(self.momentum).add_(g)
        p.sub_(self.lr * buf)

    def _nesterov(self, p, g):
        buf = self.state["buf"]
        buf.mul_(self.momentum).add_(g)
        p.sub_(self.lr * (g + self.momentum * buf))

    def _adam(self, p, g):
        beta1, beta2 = 0.9, 0.999
        m, v, t = self.state["m"], self.state["v"], self.step_count
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        if self.flavour == "keras":  # eps 1e-7 outside the bias correction ("epsilon hat")
            alpha = self.lr * torch.sqrt(1 - beta2**t) / (1 - beta1**t)
            p.sub_(alpha * m / (v.sqrt() + 1e-7))
        else:
            denom = v.sqrt() / torch.sqrt(1 - beta2**t) + 1e-8
            p.sub_(self.lr / (1 - beta1**t) * m / denom)

    def _rmsprop(self, p, g):
        rho, eps = (0.9, 1e-7) if self.flavour == "keras" else (0.99, 1e-8)
        v = self.state["v"]
        v.mul_(rho).addcmul_(g, g, value=1 - rho)
        if self.flavour == "keras":
            p.sub_(self.lr * g / (v + eps).sqrt())
        else:
            p.sub_(self.lr * g / (v.sqrt() + eps))

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.step_count, *self.state.values()]


class _GraphedStep:
    """A training step for a fixed batch size: eager, or captured once in a CUDA graph and replayed.

    Subclasses implement `_step()` (reading the batch indices from `self.index`) and
    `state()` (every tensor the step changes in place)."""

    graph: Optional[torch.cuda.CUDAGraph] = None
    index: torch.Tensor

    def _step(self) -> None:
        raise NotImplementedError

    def state(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def capture(self, pool=None, stream: Optional[torch.cuda.Stream] = None) -> None:
        """Record the step in a CUDA graph. Capture needs warm-up steps first; they are undone."""
        saved = [t.detach().clone() for t in self.state()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, stream=stream):
            self._step()
        with torch.no_grad():
            for t, value in zip(self.state(), saved):
                t.copy_(value)

    def __call__(self, index: torch.Tensor) -> None:
        self.index.copy_(index)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._step()


class _PackStep(_GraphedStep):
    """One step of a whole MLP pack: each model its own batch, all models in one set of kernels."""

    def __init__(self, stack: StackedMLP | StackedCNN, optimizer: StackedOptimizer, x, y, batch: int,
                 jobs: Sequence[Job], totals: tuple[torch.Tensor, torch.Tensor], compiled: bool = False):
        self.stack, self.optimizer, self.x, self.y = stack, optimizer, x, y
        # The update too: eager, Adam is about ten passes over the stack's weights (0.27 ms of a seed-cnn
        # stack's 8.2 ms step for 8 models); compiled, one (7.81 against 8.00 ms a step). dynamic=False: a
        # stack of another size gets kernels of its own rather than a recompile for any size.
        compile_static = partial(torch.compile, backend=COMPILE_BACKEND, dynamic=False)
        self.forward = compile_static(stack.forward) if compiled else stack.forward
        self.update = compile_static(optimizer.step) if compiled else optimizer.step
        self.index = torch.zeros(stack.k, batch, dtype=torch.long, device=x.device)
        self.l1, self.l2 = jobs[0].spec.train.l1, jobs[0].spec.train.l2
        self.amp = autocast_dtype(jobs[0].spec, x.device)  # equal for the whole stack (part of stack_key)
        self.loss_total, self.correct_total = totals

    def state(self) -> list[torch.Tensor]:
        return self.stack.state_tensors() + self.optimizer.state_tensors() + [self.loss_total, self.correct_total]

    def _step(self) -> None:
        k, batch = self.index.shape
        xb, yb = self.x[self.index], self.y[self.index]  # (K, B, features), (K, B)
        with torch.autocast(xb.device.type, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None):
            logits = self.forward(self.stack.params, xb, training=True).float()
        losses = F.cross_entropy(logits.reshape(k * batch, -1), yb.reshape(-1), reduction="none").view(k, batch)
        per_model = losses.mean(1)
        # Summing the models' losses gives each model exactly its own gradient.
        total = per_model.sum()
        for w in self.stack.kernel_views(self.stack.params) if (self.l1 or self.l2) else ():
            total = total + self.l1 * w.abs().sum() + self.l2 * w.pow(2).sum()
        (grad,) = torch.autograd.grad(total, self.stack.params)
        self.update(self.stack.params, grad)
        self._count(per_model.detach(), logits.detach(), yb)

    @torch.no_grad()
    def _count(self, per_model: torch.Tensor, logits: torch.Tensor, yb: torch.Tensor) -> None:
        self.loss_total.add_(per_model * yb.shape[1])
        self.correct_total.add_((logits.argmax(2) == yb).sum(1))


class _FusedPackStep(_PackStep):
    """A _PackStep through the stack's hand-written forward and backward (`relulab.fused`) instead of autograd."""

    def _step(self) -> None:
        xb, yb = self.x[self.index], self.y[self.index]
        params = self.stack.params.detach()
        grad = torch.empty_like(params)
        per_model, logits = self.stack.fused.gradient(params, xb, yb, grad)
        if self.l1 or self.l2:
            with torch.no_grad():
                for w, g in zip(self.stack.kernel_views(params), self.stack.kernel_views(grad)):
                    g.add_(self.l1 * w.sign() + 2 * self.l2 * w)
        self.optimizer.step(self.stack.params, grad)
        self._count(per_model, logits, yb)


@torch.no_grad()
def _evaluate_stack(stack: StackedMLP | StackedCNN, x: torch.Tensor, y: torch.Tensor, batch: int,
                    amp: Optional[torch.dtype] = None) -> tuple[list[float], list[float]]:
    """Per-model (loss, accuracy) on shared inputs, one read-back at the end."""
    loss = torch.zeros(stack.k, device=x.device)
    correct = torch.zeros(stack.k, device=x.device, dtype=torch.long)
    if isinstance(stack, StackedCNN):  # 16 seed-cnns' activations at batch 2048 are just within the kernels' reach
        batch = min(batch, stack.largest_batch(x.shape[1:]))
    x = x.flatten(1) if stack.flat_input else x
    for start in range(0, len(x), batch):
        with torch.autocast(x.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            logits = stack.forward(stack.params, x[start:start + batch], training=False).float()
        target = y[start:start + batch].unsqueeze(0).expand(stack.k, -1)
        loss += F.cross_entropy(logits.transpose(1, 2), target, reduction="none").sum(1)
        correct += (logits.argmax(2) == target).sum(1)
    n = max(1, len(x))
    # Divide on the host, as train.evaluate does: a float32 ratio would differ from a single run's in the 8th digit.
    return [v / n for v in loss.tolist()], [c / n for c in correct.tolist()]


def flatten_parameters(model: nn.Module) -> torch.Tensor:
    """Move all of `model`'s parameters into one (1, n) buffer and make each parameter a view of it,
    so the optimizer updates every weight with a few elementwise kernels."""
    params = list(model.parameters())
    buffer = torch.cat([p.detach().reshape(-1) for p in params]).unsqueeze(0)
    offset = 0
    for p in params:
        p.data = buffer[0, offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return buffer


class _ModelStep(_GraphedStep):
    """One training step of one ordinary model (any architecture), with bf16 autocast if asked, and its
    forward (and so backward) compiled by torch.compile if `compiled`."""

    def __init__(self, model: nn.Module, flat: torch.Tensor, optimizer: StackedOptimizer, x, y, batch: int,
                 job: Job, totals: tuple[torch.Tensor, torch.Tensor], slot: int, amp: Optional[torch.dtype],
                 compiled: bool = False):
        self.model, self.flat, self.optimizer, self.x, self.y, self.amp = model, flat, optimizer, x, y, amp
        # The compiled module shares the model's parameters; it is traced on the first (warm-up) step.
        self.forward = torch.compile(model, backend=COMPILE_BACKEND) if compiled else model
        self.params = list(model.parameters())
        self.kernels = kernel_weights(model)
        self.l1, self.l2 = job.spec.train.l1, job.spec.train.l2
        self.index = torch.zeros(batch, dtype=torch.long, device=x.device)
        self.totals = totals
        self.loss_total, self.correct_total = totals[0][slot], totals[1][slot]  # this model's entries

    def state(self) -> list[torch.Tensor]:
        return [self.flat, *self.model.buffers(), *self.optimizer.state_tensors(), *self.totals]

    def _step(self) -> None:
        xb, yb = self.x[self.index], self.y[self.index]
        if xb.dim() == 4 and xb.is_cuda:
            xb = xb.contiguous(memory_format=torch.channels_last)  # what cuDNN's fastest bf16 kernels want
        with torch.autocast(xb.device.type, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None):
            logits = self.forward(xb)
        loss = F.cross_entropy(logits.float(), yb)
        total = loss + weight_penalty(self.kernels, self.l1, self.l2) if (self.l1 or self.l2) else loss
        grads = torch.autograd.grad(total, self.params)
        self.optimizer.step(self.flat, torch.cat([g.reshape(-1) for g in grads]).unsqueeze(0))
        with torch.no_grad():
            self.loss_total.add_(loss.detach() * len(yb))
            self.correct_total.add_((logits.argmax(1) == yb).sum())


# ---------------------------------------------------------------- training many models together


class _Unit:
    """Models driven by one chain of kernels (one CUDA stream): a stack of MLPs, or one model of any kind."""

    def __init__(self, jobs: Sequence[Job], models: list[SlotNet], device: torch.device):
        self.jobs, self.models = list(jobs), models
        self.amp = [autocast_dtype(job.spec, device) for job in jobs]
        self.products = float32_products(jobs[0].spec)  # one for the unit: precision is part of stack_key
        self.totals = (torch.zeros(len(jobs), device=device), torch.zeros(len(jobs), device=device))
        self.steps: dict[int, _GraphedStep] = {}
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.stack: Optional[StackedMLP | StackedCNN] = None
        self.compiled = False  # whether the unit's full-batch step went through torch.compile
        self.best: list[Optional[tuple[int, object]]] = [None] * len(jobs)  # (epoch, snapshot) per model

    def capture(self) -> None:
        pool = None  # one memory pool per unit: graphs on different streams may run at once
        for step in self.steps.values():
            with matmul_precision(self.products):  # the graph keeps the kernels chosen now
                step.capture(pool, self.stream)
            pool = step.graph.pool()

    def step(self, order: torch.Tensor, start: int, stop: int) -> None:
        index = order[:, start:stop] if self.stack is not None else order[0, start:stop]
        with torch.cuda.stream(self.stream) if self.stream is not None else nullcontext(), \
                matmul_precision(self.products):
            self.steps[stop - start](index)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch: int) -> list[tuple[float, float]]:
        with matmul_precision(self.products):
            if self.stack is not None:
                return list(zip(*_evaluate_stack(self.stack, x, y, batch, self.amp[0])))
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
        """This unit's training state as plain data and CPU tensors (relulab.resume)."""
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
        if self.stack is not None:
            model = copy.deepcopy(self.models[k])
            self.stack.write_model(model, snapshot)
            snapshot = model.state_dict()
        return {name: t.detach().cpu() for name, t in snapshot.items()}


def _snapshot_tensors(snapshot) -> list[torch.Tensor]:
    """The tensors of a best-epoch snapshot: a stack's model rows, or a model's state dict, in a fixed order."""
    if isinstance(snapshot, dict):
        return list(snapshot.values())
    params, running = snapshot
    return [params, *(t for pair in running for t in pair)]


def _stack_unit(jobs: Sequence[Job], splits: Splits, device: torch.device, sizes: list[int]) -> _Unit:
    unit = _Unit(jobs, [build_for(job.spec, splits, job.seed, device) for job in jobs], device)
    if cnn_stack_key(jobs[0]) is not None:
        unit.stack = StackedCNN(unit.models, triton_kernels=device.type == "cuda" and unit.amp[0] == torch.bfloat16)
    else:
        unit.stack = StackedMLP(unit.models)
    step = _PackStep
    if fused.fusable(jobs[0]):  # then every job of the stack is (it is part of stack_key)
        linear = [(op.weight, op.bias, op.shape) for op in unit.stack.ops if op.kind == "linear"]
        unit.stack.fused = fused.FusedMLP(unit.models, unit.stack.sizes, linear, device, precision=unit.products)
        step = _FusedPackStep
    optimizer = StackedOptimizer(unit.stack.params, jobs)
    x = splits.x_train.flatten(1) if unit.stack.flat_input else splits.x_train
    unit.compiled = step is _PackStep and compiles_stack(jobs, device)
    # As for single models, only the full batch is compiled; the epoch's short last batch runs as it is.
    unit.steps = {size: step(unit.stack, optimizer, x, splits.y_train, size, jobs, unit.totals,
                             unit.compiled and size == max(sizes)) for size in sizes}
    return unit


def _model_unit(job: Job, splits: Splits, device: torch.device, sizes: list[int], compiled: bool = False) -> _Unit:
    """One model's unit; with `compiled`, its full-batch step is compiled (the epoch's one short last batch
    runs uncompiled rather than pay a second compilation for another shape)."""
    unit = _Unit([job], [build_for(job.spec, splits, job.seed, device)], device)
    flat = flatten_parameters(unit.models[0])
    optimizer = StackedOptimizer(flat, [job])
    unit.steps = {size: _ModelStep(unit.models[0], flat, optimizer, splits.x_train, splits.y_train, size, job,
                                   unit.totals, 0, unit.amp[0], compiled and size == max(sizes)) for size in sizes}
    unit.compiled = compiled
    return unit


# torch.compile (Inductor) fuses each conv model's batch norm, activation, pooling and bias-gradient kernels:
# on an H100, seed-cnn's graphed step went from 2.22 to 1.64 ms alone, and from 11.9 to 9.1 ms for 8 models
# side by side (BENCHMARKS.md). Compiling costs 12-25 s for each distinct model (slot placement; 25 s with a
# cold cache) and saves about 0.13 s a model-epoch in a pack, so by default (train.compile unset) it is used
# where at least this many model-epochs share one placement.
COMPILE_MIN_MODEL_EPOCHS = 200
COMPILE_BACKEND = "inductor"  # a test swaps in a recording backend, which needs no C++ or Triton compiler


def compiles(job: Job, group: Sequence[Job], device: torch.device) -> bool:
    """Whether `job`'s step (an unstacked model's) is compiled when it trains with `group`."""
    if job.spec.train.compile is not None:
        return job.spec.train.compile
    if device.type != "cuda" or job.spec.model.name not in CONV_MODELS:
        return False
    same_graph = sum(1 for other in group if other.spec.model == job.spec.model)
    return same_graph * job.spec.train.epochs >= COMPILE_MIN_MODEL_EPOCHS


def compiles_stack(jobs: Sequence[Job], device: torch.device) -> bool:
    """Whether a stack's step is compiled: as train.compile says, else for seed-cnn stacks on CUDA with at
    least COMPILE_MIN_MODEL_EPOCHS model-epochs (one compilation per stack). MLP stacks are not compiled."""
    if cnn_stack_key(jobs[0]) is None:
        return False
    if jobs[0].spec.train.compile is not None:  # equal across the stack (part of cnn_stack_key)
        return jobs[0].spec.train.compile
    return device.type == "cuda" and len(jobs) * jobs[0].spec.train.epochs >= COMPILE_MIN_MODEL_EPOCHS


# Models to a stack when the caller does not say. The fused step costs the same number of kernels
# however many models it stacks, so its stacks take everything (20 models: 19.1 s against 20.2 s
# in two stacks, BENCHMARKS.md); autograd stacks stop at 8, past which a bigger stack did not pay.
# seed-cnn stacks fill the GPU better up to 16 (a step of 11.1 ms for 16 against 5.9 for 8 on an H100); more
# run as stacks side by side (on an H200, 32 as two of 16: 2% more model-epochs/s than one of 16; one stack of
# 32, or 64 as four stacks of 16, ran no faster than two of 16).
DEFAULT_MAX_STACK = 8
DEFAULT_MAX_FUSED_STACK = 64
DEFAULT_MAX_CNN_STACK = 16


def stack_sizes(count: int, most: int) -> list[int]:
    """count models in as few stacks of at most `most` as can be, of near-equal sizes (18, 16 -> 9, 9):
    the stacks run side by side, so a small last one would only wait for the big ones."""
    stacks = -(-count // most)
    return [count // stacks + (1 if i < count % stacks else 0) for i in range(stacks)]


def _default_max_stack(job: Job) -> int:
    if fused.fusable(job):
        return DEFAULT_MAX_FUSED_STACK
    return DEFAULT_MAX_CNN_STACK if cnn_stack_key(job) is not None else DEFAULT_MAX_STACK


def _form_units(jobs: Sequence[Job], splits: Splits, device: torch.device, sizes: list[int],
                max_stack: Optional[int] = None, stack_cnns: bool = False) -> list[_Unit]:
    """Stack MLPs that can share a stack (up to `max_stack` each, by default as `_default_max_stack`
    says), and seed-cnns too with `stack_cnns`; every other job is a unit of its own."""
    stacks: dict[tuple, list[Job]] = {}
    units = []
    for job in jobs:
        key = stack_key(job) or (cnn_stack_key(job) if stack_cnns else None)
        if key is None:
            units.append(_model_unit(job, splits, device, sizes, compiles(job, jobs, device)))
        else:
            stacks.setdefault(key, []).append(job)
    for members in stacks.values():
        # A fused stack applies each activation to a run of neighbouring models: put equal placements together.
        members.sort(key=lambda job: (job.spec.model.activation, sorted(job.spec.model.slots.items())))
        start = 0
        for size in stack_sizes(len(members), max_stack or _default_max_stack(members[0])):
            units.append(_stack_unit(members[start:start + size], splits, device, sizes))
            start += size
    return units


def train_together(jobs: Sequence[Job], splits: Splits, device: torch.device, graphs: Optional[bool] = None,
                   max_stack: Optional[int] = None, stack_cnns: Optional[bool] = None,
                   saver: Optional[resume.Saver] = None) -> list[RunResult]:
    """Train jobs that share a schedule (batch size, epochs) at the same time; one RunResult per job, in order.

    MLPs are stacked (`max_stack` to a stack), and so are seed-cnns with `stack_cnns` (by default where
    `stacks_cnns` says); other models run one per unit; on CUDA each
    unit's step is a CUDA graph and the units' graphs are replayed side by side on their
    own streams, so the GPU works on several small models at once. `saver` (relulab.resume): save the pack's
    state at epoch boundaries on its schedule, and go on from a saved state of these jobs if there is one."""
    assert len({schedule_key(j) for j in jobs}) == 1, "jobs must share batch size and epochs"
    spec = jobs[0].spec.train
    setup_started = _now(device)
    bounds = epoch_batches(len(splits.x_train), spec.batch_size)
    if stack_cnns is None:
        stack_cnns = stacks_cnns(jobs, device)
    units = _form_units(jobs, splits, device, sorted({b - a for a, b in bounds}), max_stack, stack_cnns)
    if graphs if graphs is not None else device.type == "cuda":
        for unit in units:
            unit.capture()
    histories = _run_epochs(units, splits, device, bounds, setup_started, saver)
    by_job: dict[int, RunResult] = {}
    info = provenance(device)
    for unit in units:
        unit.finish()
        tests = unit.evaluate(splits.x_test, splits.y_test, spec.eval_batch_size)
        for k, (job, model, history, test) in enumerate(zip(unit.jobs, unit.models, histories[id(unit)], tests)):
            if history.diverged_at is None:
                history.test_loss, history.test_acc = test
            data = {**splits.summary(), "trained_with": len(jobs), "arithmetic": arithmetic(job.spec, device),
                    "compiled": unit.compiled, "stacked": unit.stack is not None}
            last = history.epochs[-1].epoch if history.epochs else None
            by_job[id(job)] = RunResult(job.spec, job.seed, history, keras_param_count(model), data, info, model,
                                        unit.best_state(k, last))
    if saver is not None:
        saver.discard()
    return [by_job[id(job)] for job in jobs]


def _run_epochs(units: list[_Unit], splits: Splits, device: torch.device, bounds, setup_started: float,
                saver: Optional[resume.Saver] = None) -> dict[int, list[History]]:
    """Train every unit epoch by epoch. The first epoch's time starts at `setup_started`, so that building the
    models, compiling and capturing graphs count in the runs' seconds."""
    spec = units[0].jobs[0].spec.train
    generators = {}
    for unit in units:
        for job in unit.jobs:
            generators[id(job)] = torch.Generator(device=device).manual_seed(job.seed)  # same order as alone
    histories = {id(unit): [History() for _ in unit.jobs] for unit in units}
    done = _resume_pack(saver, units, generators, histories)
    seen, n = bounds[-1][1], len(splits.x_train)
    for epoch in range(done + 1, spec.epochs + 1):
        started = setup_started if epoch == done + 1 else _now(device)
        live = [u for u in units if any(h.diverged_at is None for h in histories[id(u)])]
        orders = {id(u): torch.stack([torch.randperm(n, device=device, generator=generators[id(j)])
                                      for j in u.jobs]) for u in live}
        for unit in live:
            for t in unit.totals:
                t.zero_()
            if unit.stream is not None:
                unit.stream.wait_stream(torch.cuda.current_stream(device))
        for a, b in bounds:
            for unit in live:  # one step of every unit; on CUDA they run concurrently
                unit.step(orders[id(unit)], a, b)
        for unit in live:
            if unit.stream is not None:
                torch.cuda.current_stream(device).wait_stream(unit.stream)
        _record_epoch(live, histories, splits, epoch, started, seen, device, spec.eval_batch_size)
        if not any(h.diverged_at is None for hs in histories.values() for h in hs):
            break
        if saver is not None and epoch < spec.epochs and saver.due():
            saver.save(epoch, _pack_state(units, generators, histories))
    return histories


def _pack_state(units: list[_Unit], generators: dict, histories: dict) -> dict:
    """Everything `_run_epochs` needs to go on after the epoch just finished: per unit in order, its tensors,
    best-epoch snapshots, its models' generators and histories."""
    return {"units": [{**unit.saved(), "keys": [job.key for job in unit.jobs],
                       "generators": [generators[id(job)].get_state() for job in unit.jobs],
                       "histories": [h.state() for h in histories[id(unit)]]} for unit in units]}


def _resume_pack(saver: Optional[resume.Saver], units: list[_Unit], generators: dict, histories: dict) -> int:
    """Put a saved state of this pack back; the epochs it had done (0: none saved, start from the beginning)."""
    state = saver.load() if saver is not None else None
    # The same jobs may form their stacks otherwise (in another order): then the saved state fits nothing here.
    if state is None or [s["keys"] for s in state["units"]] != [[job.key for job in u.jobs] for u in units]:
        return 0
    for unit, saved in zip(units, state["units"]):
        unit.restore(saved)
        for job, generator_state in zip(unit.jobs, saved["generators"]):
            generators[id(job)].set_state(generator_state)
        for history, history_state in zip(histories[id(unit)], saved["histories"]):
            history.restore(history_state)
    return int(state["epoch"])


def _record_epoch(units, histories, splits, epoch, started, seen, device, eval_batch) -> None:
    evaluations = {id(u): u.evaluate(splits.x_val, splits.y_val, eval_batch) for u in units}
    train = {id(u): tuple([v / seen for v in t.tolist()] for t in u.totals) for u in units}
    # The epoch's wall time is shared by every model trained in it.
    seconds = (_now(device) - started) / sum(len(u.jobs) for u in units)
    for unit in units:
        losses, accs = train[id(unit)]
        for k, history in enumerate(histories[id(unit)]):
            if history.diverged_at is None:
                history.epochs.append(EpochRecord(epoch, losses[k], accs[k], *evaluations[id(unit)][k], seconds))
                if history.best is not None and history.best.epoch == epoch:  # as train.BestWeights decides
                    unit.keep_best(k, epoch)
                if not math.isfinite(losses[k]):
                    history.diverged_at = epoch


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def train_many(jobs: Sequence[Job], splits: Splits, device: str | torch.device = "auto", callbacks=None,
               pack: bool = True, max_pack: int = 64, max_stack: Optional[int] = None,
               still_wanted: Optional[Callable[[list[Job]], list[Job]]] = None, resume: Optional[Resume] = None
               ) -> "Iterator[tuple[Job, RunResult]]":
    """Train every job on the same data; yield (job, result) as each one finishes.

    This is the one entry point experiments and searches use, so that scheduling is
    decided in one place: jobs with the same batch size and epochs train together
    (`relulab.pack.train_together`: MLPs stacked into batched kernels, on CUDA every
    model's step a CUDA graph, run side by side), up to `max_pack` at a time; the rest
    train one by one. `callbacks(job)` may return callbacks for a job; such a job trains
    alone, since callbacks see one model. A pack that runs out of GPU memory is halved
    and retried. `still_wanted(jobs)`, if given, is asked just before each pack (or lone
    run) starts and returns those of its jobs still to train: a sweep passes one that
    drops what another process stored, or took over, while earlier packs trained. `resume`
    (relulab.resume): save each pack and lone run at epoch boundaries, keyed by its jobs' keys, and go on
    from such a save where one is found.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    if splits.x_train.device != device:
        splits = splits.to(device)
    groups: dict = {}
    for job in jobs:
        extra = callbacks(job) if callbacks else ()
        key = pack_key(job, device) if pack and not extra else None
        groups.setdefault(key if key is not None else ("alone", id(job)), []).append((job, extra))
    wanted = still_wanted or list
    for key, members in groups.items():
        if key[0] == "alone" or (len(members) == 1 and device.type != "cuda"):
            job, extra = members[0]
            if wanted([job]):
                saver = resume.saver([job.key]) if resume else None
                yield job, run(job.spec, job.seed, device, splits=splits, callbacks=extra, saver=saver)
            continue
        for start in range(0, len(members), max_pack):
            chunk = wanted([job for job, _ in members[start:start + max_pack]])
            if chunk:
                yield from _train_together_halving(chunk, splits, device, max_stack, resume)


def _train_together_halving(jobs: list[Job], splits: Splits, device: torch.device, max_stack: Optional[int] = None,
                            resume: Optional[Resume] = None):
    try:
        saver = resume.saver([job.key for job in jobs]) if resume else None
        results = train_together(jobs, splits, device, max_stack=max_stack, saver=saver)
    except torch.cuda.OutOfMemoryError:
        if len(jobs) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(jobs) // 2
        yield from _train_together_halving(jobs[:half], splits, device, max_stack, resume)
        yield from _train_together_halving(jobs[half:], splits, device, max_stack, resume)
        return
    yield from zip(jobs, results)
