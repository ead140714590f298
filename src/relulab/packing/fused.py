"""A hand-written training step for stacks of plain MLPs (deep-mlp without batch norm).

Under autograd a stacked Linear + activation costs about six kernels a step (baddbmm and
the activation forward; activation backward, two bmms and a bias reduction backward), so
seed 001's 51-layer model is a chain of about 300 tiny kernels, bound by their latency
even inside a CUDA graph. Here each layer is one kernel forward (matmul + bias +
activation) and one backward (activation derivative, input gradient, weight and bias
gradients), about 110 a step, whatever the number of models stacked. With tf32 products, seed 001's 48 square middle
layers are one `Run` of three kernels instead of 96 (`find_runs`; relulab.kernels.fused_triton): about 20 a step.

Models in one stack may differ in activation, per model and layer: each layer carries one
activation code per model (`relulab.zoo.activations.KERNEL_CODES`). The derivative is taken
from the activation's output (ReLU, sigmoid, tanh and identity allow that: the registry's
`output_grad`), so only the layers' outputs are kept for the backward pass. Which jobs train
this way is `relulab.packing.rules.fusable`.

On CUDA the layers are Triton kernels (`relulab.kernels.fused_triton`); elsewhere they are the
PyTorch reference functions below, which compute the same thing. The CPU tests check the
reference against single autograd runs; `benchmarks/bench_speed.py --parts check` checks
the Triton kernels against the reference on the GPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from relulab.zoo.activations import BY_KERNEL_CODE, KERNEL_CODES
from relulab.core.env import matmul_precision
from relulab.zoo.models import SlotNet

MAX_BATCH = 128  # the backward kernel holds one model's whole batch in registers


@dataclass
class Layer:
    weight: int  # index into the split of the stack's flat parameters
    bias: int
    fan_in: int
    fan_out: int
    codes: torch.Tensor  # (K,) int32 activation codes, on the device, for the kernels
    groups: list[tuple[int, int, int]]  # (start, stop, code): runs of models with one activation


def reference_forward(x, w, b, layer: Layer, out, precision: str = "ieee") -> None:
    """out (K, B, fan_out) = act(x @ w.T + b) for every model of the stack."""
    with matmul_precision(precision):
        z = torch.baddbmm(b.unsqueeze(1), x, w.view(len(x), layer.fan_out, layer.fan_in).transpose(1, 2))
    for start, stop, code in layer.groups:
        out[start:stop] = BY_KERNEL_CODE[code].fn(z[start:stop], None)


def reference_backward(g, y, x, w, layer: Layer, dw, db, dx: Optional[torch.Tensor], precision: str = "ieee") -> None:
    """From g = dL/d(output) and the output y: dw, db (views of the flat gradient) and dx = dL/dx."""
    delta = torch.empty_like(g)
    for start, stop, code in layer.groups:
        delta[start:stop] = g[start:stop] * BY_KERNEL_CODE[code].output_grad(y[start:stop])
    k = len(x)
    with matmul_precision(precision):
        dw.view(k, layer.fan_out, layer.fan_in).copy_(torch.bmm(delta.transpose(1, 2), x))
        if dx is not None:
            torch.bmm(delta, w.view(k, layer.fan_out, layer.fan_in), out=dx)
    db.copy_(delta.sum(1))


def runs(values: list) -> list[tuple[int, int, object]]:
    """[a, a, b] -> [(0, 2, a), (2, 3, b)]: the runs of equal neighbours."""
    found, start = [], 0
    for k in range(1, len(values) + 1):
        if k == len(values) or values[k] != values[start]:
            found.append((start, k, values[start]))
            start = k
    return found


@dataclass
class Run:
    """Consecutive layers [start, stop) of one width in and out (at most MAX_RUN_WIDTH), their weights one after
    another in the flat parameters: on the GPU a run is three kernels instead of two per layer
    (`relulab.kernels.fused_triton.run_forward`)."""

    start: int
    stop: int
    width: int
    codes: torch.Tensor  # (K, layers) int32: each model's activation code in each layer of the run


MAX_RUN_WIDTH = 128  # a run's kernels hold a whole (batch rows x width) tile and a width x width weight per program
MIN_RUN = 2


def find_runs(layers: list[Layer]) -> list[Run]:
    """The runs of at least MIN_RUN square layers of one width, each layer's weight and bias next to each other and
    to the next layer's in the flat parameters (as relulab.packing.stacking lays them out)."""
    def continues(start: int, index: int) -> bool:
        layer = layers[index]
        return (layer.fan_in == layer.fan_out == layers[start].fan_in and layer.bias == layer.weight + 1
                and (index == start or layer.weight == layers[index - 1].bias + 1))

    found, start = [], 0
    while start < len(layers):
        stop = start
        while stop < len(layers) and continues(start, stop):
            stop += 1
        if stop - start >= MIN_RUN and layers[start].fan_in <= MAX_RUN_WIDTH:
            codes = torch.stack([layer.codes for layer in layers[start:stop]], dim=1).contiguous()
            found.append(Run(start, stop, layers[start].fan_in, codes))
        start = max(stop, start + 1)
    return found


class FusedMLP:
    """The Linear layers of a stack of K plain MLPs, with a forward and backward written by hand.

    `sizes` and `linear` come from `relulab.packing.stacked_mlp.StackedMLP`: how the flat (K, n) parameters
    split, and each Linear layer's (weight index, bias index, (out, in)). `precision`: "ieee" (fp32
    products) or "tf32". With the Triton kernels and tf32 products, runs of square layers (`find_runs`) go through
    the run kernels; the PyTorch reference computes every layer alone."""

    def __init__(self, models: Sequence[SlotNet], sizes: list[int], linear: list[tuple[int, int, tuple]],
                 device: torch.device, use_triton: Optional[bool] = None, precision: str = "ieee"):
        self.sizes, self.precision = sizes, precision
        identity = KERNEL_CODES["identity"]  # the classifier's
        placements = [[KERNEL_CODES[a] for a in m.placement()] + [identity] for m in models]
        self.layers = []
        for index, (weight, bias, (fan_out, fan_in)) in enumerate(linear):
            codes = [p[index] for p in placements]
            self.layers.append(Layer(weight, bias, fan_in, fan_out, torch.tensor(codes, dtype=torch.int32,
                                                                                 device=device), runs(codes)))
        owned = {index for weight, bias, _ in linear for index in (weight, bias)}
        self.unowned = [index for index in range(len(sizes)) if index not in owned]  # a row's padding (stacking)
        self._forward, self._backward = reference_forward, reference_backward
        self.runs: list[Run] = []
        self._kernels = None
        if use_triton if use_triton is not None else device.type == "cuda":
            from relulab.kernels import fused_triton
            self._forward, self._backward = fused_triton.linear_forward, fused_triton.linear_backward
            self._kernels = fused_triton
            # Only with tensor-core products: on fp32 FMA a run's 128 x 128 products per program are slower than
            # the per-layer kernels (BENCHMARKS.md, "Tried, did not pay: whole runs of layers in one kernel").
            if precision == "tf32":
                self.runs = find_runs(self.layers)

    def _activations(self, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[int, torch.Tensor]]:
        """Every layer's input and the last one's output, (K, B, width) each: outputs[i] is layer i's input. A run's
        input and its layers' outputs are consecutive slices of one (layers + 1, K, B, width) tensor, as its kernels
        read them: those tensors by the run's first layer."""
        k, batch, _ = x.shape
        outputs: list[Optional[torch.Tensor]] = [x] + [None] * len(self.layers)
        blocks = {}
        for run in self.runs:
            block = blocks[run.start] = x.new_empty(run.stop - run.start + 1, k, batch, run.width)
            if run.start == 0:
                block[0].copy_(x)
            outputs[run.start:run.stop + 1] = list(block)
        for index, layer in enumerate(self.layers):
            if outputs[index + 1] is None:
                outputs[index + 1] = x.new_empty(k, batch, layer.fan_out)
        return outputs, blocks

    def _forward_all(self, views, outputs: list[torch.Tensor], blocks: dict[int, torch.Tensor]) -> None:
        runs_from = {run.start: run for run in self.runs}
        index = 0
        while index < len(self.layers):
            layer = self.layers[index]
            if index in runs_from:
                run = runs_from[index]
                self._kernels.run_forward(blocks[index], views[layer.weight], run.codes, self.precision)
                index = run.stop
            else:
                self._forward(outputs[index], views[layer.weight], views[layer.bias], layer, outputs[index + 1],
                              self.precision)
                index += 1

    def _backward_all(self, g, views, grads, outputs: list[torch.Tensor], blocks: dict[int, torch.Tensor]) -> None:
        """From g = dL/d(logits), back through every layer (or run), writing the gradient into `grads`."""
        runs_to = {run.stop - 1: run for run in self.runs}
        index = len(self.layers) - 1
        while index >= 0:
            run = runs_to.get(index)
            start = run.start if run is not None else index
            dx = torch.empty_like(outputs[start]) if start > 0 else None  # the input's gradient, but not the data's
            first = self.layers[start]
            if run is not None:
                deltas = g.new_empty(run.stop - run.start, *g.shape)
                self._kernels.run_backward(g, blocks[start], views[first.weight], run.codes, deltas, dx,
                                           self.precision)
                self._kernels.run_weight_grad(blocks[start], deltas, grads[first.weight], self.precision)
            else:
                self._backward(g, outputs[index + 1], outputs[index], views[first.weight], first,
                               grads[first.weight], grads[first.bias], dx, self.precision)
            g, index = dx, start - 1

    @torch.no_grad()
    def gradient(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For a batch x (K, B, features), labels y (K, B): each model's mean loss (K,) and the logits
        (K, B, classes); writes the gradient of the summed losses into `grad` (shaped like params)."""
        k, batch, _ = x.shape
        views, grads = params.split(self.sizes, dim=1), grad.split(self.sizes, dim=1)
        outputs, blocks = self._activations(x)
        self._forward_all(views, outputs, blocks)
        logits = outputs[-1]
        losses = F.cross_entropy(logits.reshape(k * batch, -1), y.reshape(-1), reduction="none").view(k, batch)
        # d(mean loss)/d(logits) = (softmax - one-hot) / B
        g = torch.softmax(logits, dim=2)
        target = y.unsqueeze(2)
        g.scatter_(2, target, g.gather(2, target) - 1).div_(batch)
        self._backward_all(g, views, grads, outputs, blocks)
        for index in self.unowned:  # no layer's: its gradient is 0, and `grad` may come uninitialised
            grads[index].zero_()
        return losses.mean(1), logits
