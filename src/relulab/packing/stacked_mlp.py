"""K deep-mlps or bn-mlps of the same shape as one stacked model (`StackedMLP`), for training them together.

Weights of all layers and models live in one flat leaf tensor of shape (K, n_params) (`relulab.packing.stacking`);
a Linear layer is `baddbmm` over the K models; batch norm is PyTorch's own kernel on a (B, K*C) view (each
model's channels are separate channels to it).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from relulab.packing.functional import MOST_VALUES
from relulab.packing.fused import FusedMLP
from relulab.packing.stacking import Op, StackedWeights
from relulab.zoo.models import Slot, SlotNet


# Each model's row of the flat parameters starts on a 64-byte boundary (16 float32s): the fused step's Triton kernels
# (relulab.kernels.fused_triton) can then load and store whole 16-byte vectors of a layer's weights, as they do only
# where Triton sees the row stride divisible by 16. With seed 001's 751,410 parameters a model, rows were 8-byte
# aligned and the run kernels issued four times the loads, one float each (BENCHMARKS.md, "Aligned rows").
ROW_MULTIPLE = 16


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
        self._finish(ROW_MULTIPLE)
        self.fused: Optional[FusedMLP] = None  # the hand-written step, for stacks that allow it

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

    def linear_layers(self) -> list[tuple[int, int, tuple]]:
        """Each Linear layer's (weight index, bias index, (out, in)) into the split of `params`: what the fused step
        (relulab.packing.fused.FusedMLP) is built from."""
        return [(op.weight, op.bias, op.shape) for op in self.ops if op.kind == "linear"]

    def largest_batch(self, features: Sequence[int]) -> int:
        """The largest batch whose widest layer, the K models side by side, PyTorch's kernels index with 32-bit
        integers (functional.MOST_VALUES; in practice any: 64 models of 1,000 units allow 33,554 images)."""
        widest = max([math.prod(features), *(op.shape[0] for op in self.ops if op.kind == "linear")])
        return max(1, MOST_VALUES // (self.k * widest))

    def _batchnorm(self, h, weight, bias, op: Op, training: bool) -> torch.Tensor:
        # To PyTorch's batch norm, model k's channel c is channel k*C + c of a (B, K*C) batch.
        k, batch, channels = h.shape
        mean, var = self.running[op.running]
        flat = h.transpose(0, 1).reshape(batch, k * channels)
        out = F.batch_norm(flat, mean, var, weight.reshape(-1), bias.reshape(-1), training,
                           op.module.momentum, op.module.eps)
        return out.view(batch, k, channels).transpose(0, 1)
