"""What every stack of K same-shape models shares (`stacked_mlp.StackedMLP`, `stacked_cnn.StackedCNN`).

The models' weights and biases live in one flat leaf tensor `params` of shape (K, n_params), each
layer's a view of it (`params.split(sizes, dim=1)`), so autograd delivers the whole gradient as one
(K, n_params) tensor and the optimizer update is a handful of elementwise kernels. Batch norms'
running statistics are (K*C,) tensors, model k's channel c at k*C + c, as PyTorch's batch norm
updates them when it sees the K models as K*C channels. After training, both are copied back into
the ordinary models they came from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from relulab.packing.fused import runs
from relulab.zoo.models import SlotNet


@dataclass
class Op:
    """One layer of a stack, in the order the data meets them."""

    kind: str  # linear | conv | act | bn | maxpool
    module: Optional[nn.Module] = None  # the first model's layer (batch norm: momentum, eps; max-pool: size)
    acts: tuple = ()  # (start, stop, activation module): the models [start, stop) share an activation
    weight: int = -1  # index into the split of params
    bias: int = -1
    shape: tuple = ()  # the weight's shape in one model
    running: int = -1  # index into running, for batch norm


class StackedWeights:
    """The stacked parameters and running statistics of K models; subclasses build `ops` from the models'
    layers with `_add_layer` and `_add_activation`, then call `_finish`."""

    def __init__(self, models: Sequence[SlotNet]):
        self.k = len(models)
        self.ops: list[Op] = []
        self.sizes: list[int] = []
        self.running: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._columns: list[torch.Tensor] = []
        self._owners: list[tuple[int, Op]] = []  # (index in the models' body, op) of each layer with weights

    def _add(self, tensors: list[torch.Tensor]) -> int:
        self._columns.append(torch.stack([t.detach().reshape(-1) for t in tensors]))
        self.sizes.append(self._columns[-1].shape[1])
        return len(self.sizes) - 1

    def _add_layer(self, kind: str, index: int, layers: Sequence[nn.Module]) -> None:
        """Stack the weight, bias (and running statistics, for batch norm) of the models' layer `index`."""
        op = Op(kind, module=layers[0], weight=self._add([l.weight for l in layers]),
                bias=self._add([l.bias for l in layers]), shape=tuple(layers[0].weight.shape))
        if kind == "bn":
            self.running.append((torch.cat([l.running_mean for l in layers]).clone(),
                                 torch.cat([l.running_var for l in layers]).clone()))
            op.running = len(self.running) - 1
        self.ops.append(op)
        self._owners.append((index, op))

    def _add_activation(self, slots: Sequence[nn.Module]) -> None:
        groups = runs([slot.spec for slot in slots])
        self.ops.append(Op("act", acts=tuple((start, stop, slots[start].act) for start, stop, _ in groups)))

    def _finish(self, row_multiple: int = 1) -> None:
        """Join the stacked columns into `params`, each model's row padded to a multiple of `row_multiple` values
        (the padding a last entry of `sizes` that no layer owns; it stays zero)."""
        padding = -sum(self.sizes) % row_multiple
        if padding:
            first = self._columns[0]
            self._columns.append(first.new_zeros(self.k, padding))
            self.sizes.append(padding)
        self.params = torch.cat(self._columns, dim=1).detach().clone().requires_grad_(True)
        del self._columns
        self.kernels = [op.weight for op in self.ops if op.kind in ("linear", "conv")]

    @staticmethod
    def _activate(h: torch.Tensor, op: Op, model_dim: int) -> torch.Tensor:
        """Each run of models through its activation; the models are along `model_dim` of h."""
        if len(op.acts) == 1:
            return op.acts[0][2](h)
        return torch.cat([act(h.narrow(model_dim, start, stop - start)) for start, stop, act in op.acts], model_dim)

    def kernel_views(self, params: torch.Tensor) -> list[torch.Tensor]:
        views = params.split(self.sizes, dim=1)
        return [views[i] for i in self.kernels]

    @torch.no_grad()
    def unstack_into(self, models: Sequence[SlotNet]) -> None:
        """Copy the trained weights and running statistics back into ordinary models."""
        for k, model in enumerate(models):
            self.write_model(model, self.model_rows(k, copy=False))

    @torch.no_grad()
    def model_rows(self, k: int, copy: bool = True) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Model k's share of the stack as it is now: its (n_params,) weights and its running statistics; a copy
        by default (a snapshot, e.g. at the model's best epoch)."""
        params = self.params.detach()[k]
        running = [(mean.view(self.k, -1)[k], var.view(self.k, -1)[k]) for mean, var in self.running]
        if copy:
            params, running = params.clone(), [(mean.clone(), var.clone()) for mean, var in running]
        return params, running

    @torch.no_grad()
    def write_model(self, model: SlotNet, rows: tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]
                    ) -> None:
        """Write one model's rows (`model_rows`) into an ordinary model of the stack's shape."""
        params, running = rows
        views = params.split(self.sizes)
        for index, op in self._owners:
            layer = model.body[index]
            layer.weight.copy_(views[op.weight].view_as(layer.weight))
            layer.bias.copy_(views[op.bias].view_as(layer.bias))
            if op.kind == "bn":
                mean, var = running[op.running]
                layer.running_mean.copy_(mean)
                layer.running_var.copy_(var)

    def state_tensors(self) -> list[torch.Tensor]:
        """Everything a training step changes in place (for undoing CUDA-graph warm-up steps)."""
        return [self.params] + [t for pair in self.running for t in pair]
