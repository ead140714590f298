"""The training steps of a pack's units, for one batch size each: eager, or captured once in a CUDA graph.

`PackStep` is one step of a whole stack (StackedMLP, StackedCNN or FunctionalStack) under autograd,
`FusedPackStep` the same through the fused MLP step (`relulab.packing.fused`), `ModelStep` one step of one
ordinary model; all update through `relulab.zoo.optim.StackedOptimizer`. A step writes everything it changes
in place, so a CUDA graph of it can be replayed.

The training recipe (`TrainSpec`) acts as in the one-model loop (relulab.training.loop): label smoothing in
the loss; a learning-rate schedule through the optimizer's learning-rate tensor, which the unit overwrites
before each step (relulab.packing.units); augmentation before the step, outside any graph, with each model's
own generator (`augment_batch`, drawn in the order the loop draws), into a fixed input buffer the graph reads.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from functools import partial
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from relulab.data.sources import cache_dir
from relulab.packing.functional import FunctionalStack
from relulab.packing.stacked_cnn import StackedCNN
from relulab.packing.stacked_mlp import StackedMLP
from relulab.training.augment import augment_batch
from relulab.training.specs import Job, autocast_dtype
from relulab.zoo.optim import StackedOptimizer, kernel_weights, weight_penalty

COMPILE_BACKEND = "inductor"  # a test swaps in a recording backend, which needs no C++ or Triton compiler


def compiler(**options):
    """torch.compile with relulab's backend and `options`, its artefacts kept in relulab's cache folder
    (`$TORCHINDUCTOR_CACHE_DIR` where the user set none): Inductor's default, /tmp/torchinductor_$USER, is lost at
    a reboot, and with it the 20-40 s a compiled stack's step takes to compile. Set before the process's first
    compile; Inductor reads it then and keeps it."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "torchinductor"))
    return partial(torch.compile, backend=COMPILE_BACKEND, **options)


@contextmanager
def put_back(tensors: list[torch.Tensor]) -> Iterator[None]:
    """Whatever runs inside may change `tensors` in place: on leaving, they hold again what they held on entering
    (steps run only to be captured or to note their kernels change no weight)."""
    saved = [t.detach().clone() for t in tensors]
    try:
        yield
    finally:
        with torch.no_grad():
            for t, value in zip(tensors, saved):
                t.copy_(value)


class GraphedStep:
    """A training step for a fixed batch size: eager, or captured once in a CUDA graph and replayed.

    Subclasses implement `_step()` (reading the batch from `_batch()`) and `state()` (every tensor the step
    changes in place). With augmentation (`augments`: one (AugmentSpec or None, generator, image shape) per
    model, set by the unit),
    each model's batch is augmented into `self.input` before the step: the generators' draws stay out of the
    graph, so they advance exactly as a lone run's."""

    graph: Optional[torch.cuda.CUDAGraph] = None
    index: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    augments: Optional[list] = None
    input: Optional[torch.Tensor] = None

    def use_augmentation(self, augments: list) -> None:
        """Augment each model's batches (`augments`, as above) into a fixed buffer, the one a graph reads: set
        before capture, since a graph replays what it captured."""
        self.augments = augments
        self.input = self.x[self.index].clone()

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        xb = self.input if self.augments is not None else self.x[self.index]
        return xb, self.y[self.index]

    @torch.no_grad()
    def _augment(self) -> None:
        rows = self.index if self.index.dim() == 2 else self.index.unsqueeze(0)
        view = self.input if self.index.dim() == 2 else self.input.unsqueeze(0)
        for k, (spec, generator, image_shape) in enumerate(self.augments):
            batch = self.x[rows[k]]
            if spec is not None:  # a stack of MLPs reads flattened images: crop and flip the images themselves
                batch = augment_batch(batch.view(-1, *image_shape), spec, generator).view(batch.shape)
            view[k].copy_(batch)

    def _step(self) -> None:
        raise NotImplementedError

    def dry_run(self) -> None:
        """One step as `_step`, through the eager path where the step is compiled: the unit runs it while
        `relulab.kernels.launches.recording()` notes the kernels it would launch, and puts back what it changed."""
        self._step()

    def state(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def capture(self, pool=None, stream: Optional[torch.cuda.Stream] = None) -> None:
        """Record the step in a CUDA graph. Capture needs warm-up steps first; they are undone."""
        with put_back(self.state()):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._step()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool, stream=stream):
                self._step()

    def __call__(self, index: torch.Tensor) -> None:
        self.index.copy_(index)
        if self.augments is not None:
            self._augment()
        if self.graph is not None:
            self.graph.replay()
        else:
            self._step()


class PackStep(GraphedStep):
    """One step of a whole MLP pack: each model its own batch, all models in one set of kernels."""

    def __init__(self, stack: StackedMLP | StackedCNN | FunctionalStack, optimizer: StackedOptimizer, x, y, batch: int,
                 jobs: Sequence[Job], totals: tuple[torch.Tensor, torch.Tensor], compiled: bool = False):
        self.stack, self.optimizer, self.x, self.y = stack, optimizer, x, y
        # The update too: eager, Adam is about ten passes over the stack's weights (0.27 ms of a seed-cnn
        # stack's 8.2 ms step for 8 models); compiled, one (7.81 against 8.00 ms a step). dynamic=False: a
        # stack of another size gets kernels of its own rather than a recompile for any size.
        compile_static = compiler(dynamic=False) if compiled else None
        if compiled and isinstance(stack, FunctionalStack):
            stack.compile(compile_static)  # the vmapped call only: the stack sets the modules' mode outside it
        self.forward = compile_static(stack.forward) if compiled and not isinstance(stack, FunctionalStack) \
            else stack.forward
        self.update = compile_static(optimizer.step) if compiled else optimizer.step
        self.index = torch.zeros(stack.k, batch, dtype=torch.long, device=x.device)
        self.l1, self.l2 = jobs[0].spec.train.l1, jobs[0].spec.train.l2
        self.smoothing = jobs[0].spec.train.label_smoothing  # equal across a stack (part of the stack keys)
        self.amp = autocast_dtype(jobs[0].spec, x.device)  # equal for the whole stack (part of stack_key)
        self.loss_total, self.correct_total = totals

    def state(self) -> list[torch.Tensor]:
        return self.stack.state_tensors() + self.optimizer.state_tensors() + [self.loss_total, self.correct_total]

    def dry_run(self) -> None:
        compiled = self.forward, self.update
        self.forward, self.update = self.stack.forward, self.optimizer.step  # not torch.compile's tracing now
        try:
            self._step()
        finally:
            self.forward, self.update = compiled

    def _step(self) -> None:
        k, batch = self.index.shape
        xb, yb = self._batch()  # (K, B, features), (K, B)
        with torch.autocast(xb.device.type, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None):
            logits = self.forward(self.stack.params, xb, training=True).float()
        losses = F.cross_entropy(logits.reshape(k * batch, -1), yb.reshape(-1), reduction="none",
                                 label_smoothing=self.smoothing).view(k, batch)
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


class FusedPackStep(PackStep):
    """A PackStep through the stack's hand-written forward and backward (`relulab.packing.fused`) instead of autograd."""

    def _step(self) -> None:
        xb, yb = self._batch()
        params = self.stack.params.detach()
        grad = torch.empty_like(params)
        per_model, logits = self.stack.fused.gradient(params, xb, yb, grad)
        if self.l1 or self.l2:
            with torch.no_grad():
                for w, g in zip(self.stack.kernel_views(params), self.stack.kernel_views(grad)):
                    g.add_(self.l1 * w.sign() + 2 * self.l2 * w)
        self.optimizer.step(self.stack.params, grad)
        self._count(per_model, logits, yb)


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


class ModelStep(GraphedStep):
    """One training step of one ordinary model (any architecture), with bf16 autocast if asked, and its
    forward (and so backward) compiled by torch.compile if `compiled`."""

    def __init__(self, model: nn.Module, flat: torch.Tensor, optimizer: StackedOptimizer, x, y, batch: int,
                 job: Job, totals: tuple[torch.Tensor, torch.Tensor], slot: int, amp: Optional[torch.dtype],
                 compiled: bool = False):
        self.model, self.flat, self.optimizer, self.x, self.y, self.amp = model, flat, optimizer, x, y, amp
        # The compiled module shares the model's parameters; it is traced on the first (warm-up) step.
        self.forward = compiler()(model) if compiled else model
        self.params = list(model.parameters())
        self.kernels = kernel_weights(model)
        self.l1, self.l2 = job.spec.train.l1, job.spec.train.l2
        self.smoothing = job.spec.train.label_smoothing
        self.index = torch.zeros(batch, dtype=torch.long, device=x.device)
        self.totals = totals
        self.loss_total, self.correct_total = totals[0][slot], totals[1][slot]  # this model's entries

    def state(self) -> list[torch.Tensor]:
        return [self.flat, *self.model.buffers(), *self.optimizer.state_tensors(), *self.totals]

    def _step(self) -> None:
        xb, yb = self._batch()
        if xb.dim() == 4 and xb.is_cuda:
            xb = xb.contiguous(memory_format=torch.channels_last)  # what cuDNN's fastest bf16 kernels want
        with torch.autocast(xb.device.type, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None):
            logits = self.forward(xb)
        loss = F.cross_entropy(logits.float(), yb, label_smoothing=self.smoothing)
        total = loss + weight_penalty(self.kernels, self.l1, self.l2) if (self.l1 or self.l2) else loss
        grads = torch.autograd.grad(total, self.params)
        self.optimizer.step(self.flat, torch.cat([g.reshape(-1) for g in grads]).unsqueeze(0))
        with torch.no_grad():
            self.loss_total.add_(loss.detach() * len(yb))
            self.correct_total.add_((logits.argmax(1) == yb).sum())
