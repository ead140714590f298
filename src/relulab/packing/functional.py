"""K copies of any model, trained as one: `FunctionalStack`, through torch.func.

relulab's hand-built stacks (`stacked_mlp`, `stacked_cnn`) know their layers. This one knows nothing about
the model: it runs K same-architecture models (relulab's CIFAR nets, a slotified user network) with
`torch.func.functional_call` under `torch.func.vmap`, so every layer sees the K models at once (vmap turns
a convolution with K weights into one grouped convolution, a linear layer into one batched product, a batch
norm into one over K x C channels).

- Weights: as in every relulab stack, one flat leaf tensor `params` of shape (K, n_params), each parameter a
  view of it, so autograd gives the whole gradient as one tensor and `StackedOptimizer` updates it in a few
  kernels, with each model's own learning rate and weight decay.
- Buffers (batch norm's running statistics): stacked (K, ...) and updated in place under vmap, model by
  model, as each model alone updates its own.
- Placements: models that put different activations in a slot (a search's candidates, `model.slots`) share
  the stack. Such a slot computes each activation used there and blends them with the model's one-hot
  `choice` (a stacked buffer): 1 * relu(x) + 0 * x is relu(x) exactly, and its gradient is relu's.

After training, `unstack_into` copies each model's share back into its ordinary model.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from relulab.zoo.models import Slot, SlottedModel, largest_output
from relulab.zoo.optim import kernel_weights


class SlotChoice(nn.Module):
    """A slot's activations across a stack, blended by each model's one-hot `choice` (a buffer, so stacked)."""

    def __init__(self, acts: Sequence[nn.Module]):
        super().__init__()
        self.acts = nn.ModuleList(acts)
        self.register_buffer("choice", torch.zeros(len(acts)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.choice[0].to(x.dtype) * self.acts[0](x)
        for j in range(1, len(self.acts)):
            out = out + self.choice[j].to(x.dtype) * self.acts[j](x)
        return out


def _normalize_in_float32(module: nn.Module) -> None:
    """Make a batch norm take bf16 input as float32 and give back bf16. Under vmap, batch norm's batching rule
    wants its input and running statistics in one dtype (under autocast, eager: "Expected running_mean to have
    type BFloat16 but got Float", measured on an H200); one model alone normalizes bf16 input in float32 inside
    cuDNN, so this computes what it computes."""
    forward = module.forward

    def in_float32(x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.bfloat16, torch.float16):
            return forward(x.float()).to(x.dtype)
        return forward(x)

    module.forward = in_float32


# The most values a tensor of the stack may hold. cuDNN indexes tensors with 32-bit integers: evaluating 64 resnet20s
# on batches of 2,048 images put 2,048 x (64 x 16 channels) x 32 x 32 = 2^31 values through one batch norm, which
# failed on an H200 ("CUDNN_STATUS_NOT_SUPPORTED", results/bench-h200-user-models/bench-sizes.jsonl), where 32 ran.
MOST_VALUES = 2**31 - 1


def _stacked(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.detach() for t in tensors]).clone()


class FunctionalStack:
    """K models of one architecture as one stacked model (module docstring). The models must have equal
    parameter and buffer names and shapes; their slots may hold different activations (without weights)."""

    flat_input = False

    def __init__(self, models: Sequence[SlottedModel]):
        self.k = len(models)
        self.base = copy.deepcopy(models[0])  # the architecture; its own tensors are never read
        self._blend_varying_slots(models)
        for module in self.base.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                _normalize_in_float32(module)
        named = [dict(m.named_parameters()) for m in models]
        self.names = list(named[0])
        shapes = [named[0][n].shape for n in self.names]
        self.sizes = [named[0][n].numel() for n in self.names]
        self.shapes = dict(zip(self.names, shapes))
        columns = [torch.stack([p[n].detach().reshape(-1) for p in named]) for n in self.names]
        self.params = torch.cat(columns, dim=1).clone().requires_grad_(True)
        model_buffers = [dict(m.named_buffers()) for m in models]
        self.buffers = {n: _stacked([b[n] for b in model_buffers]) for n in model_buffers[0]}
        self.buffers.update(self._choices)
        kernels = {id(w) for w in kernel_weights(models[0])}  # what the l1 and l2 penalties weigh
        self.kernels = [i for i, n in enumerate(self.names) if id(named[0][n]) in kernels]
        self._values_per_image: dict[tuple, int] = {}
        self._shared_call = vmap(self._one, in_dims=(0, 0, None))
        self._own_call = vmap(self._one, in_dims=(0, 0, 0))

    def _blend_varying_slots(self, models: Sequence[SlottedModel]) -> None:
        """Where the models' activations in a slot differ, the base's slot blends them (SlotChoice)."""
        self._choices: dict[str, torch.Tensor] = {}
        per_model = [{s.index: s for s in m.slots} for m in models]
        for path, slot in [(n, m) for n, m in self.base.named_modules() if isinstance(m, Slot)]:
            specs = [slots[slot.index].spec for slots in per_model]
            distinct = list(dict.fromkeys(specs))
            if len(distinct) == 1:
                continue
            acts = [copy.deepcopy(next(s[slot.index].act for s in per_model if s[slot.index].spec == d))
                    for d in distinct]
            slot.act = SlotChoice(acts).to(next(iter(models[0].parameters())).device)
            choice = torch.zeros(self.k, len(distinct), device=slot.act.choice.device)
            for k, spec in enumerate(specs):
                choice[k, distinct.index(spec)] = 1.0
            self._choices[f"{path}.act.choice" if path else "act.choice"] = choice

    def views(self, params: torch.Tensor) -> dict[str, torch.Tensor]:
        """The stacked (K, *shape) parameter tensors, as views of `params`."""
        return {n: v.view(self.k, *self.shapes[n]) for n, v in zip(self.names, params.split(self.sizes, dim=1))}

    def _one(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def forward(self, params: torch.Tensor, x: torch.Tensor, training: bool = True) -> torch.Tensor:
        """Logits (K, B, classes): x is (K, B, ...) (each model its own batch) or (B, ...) (one batch for all)."""
        self.base.train(training)  # here, outside any compiled code: the mode is Python state of the modules
        own = x.dim() == len(self.base.input_shape) + 2
        if own and x.is_cuda and x.dim() == 5:
            # Meant as channels-last for cuDNN's bf16 kernels. What it makes: (K, B, C, H, W) stored in the order
            # B, C, H, W, K (K innermost). vmap's convolution rule folds K into the channels as (B, K*C, H, W),
            # which from this order is not a view, so the first convolution reads a copy; a true channels-last
            # (B, H, W, K, C) order was never measured against it, so this stays as it was timed.
            x = x.transpose(0, 1).contiguous(memory_format=torch.channels_last_3d).transpose(0, 1)
        call = self._own_call if own else self._shared_call
        return call(self.views(params), self.buffers, x)

    def largest_batch(self, image_shape: Sequence[int]) -> int:
        """The largest batch of `image_shape` inputs whose biggest activation, the K models side by side, stays
        within MOST_VALUES (evaluation splits its batches to this)."""
        key = tuple(image_shape)
        if key not in self._values_per_image:
            self._values_per_image[key] = largest_output(self.base, key)  # the base's own weights: shapes only
        return max(1, MOST_VALUES // (self.k * self._values_per_image[key]))

    def compile(self, compiler) -> "FunctionalStack":
        """Compile the training call (`compiler`: torch.compile with the caller's options); evaluation, on
        other shapes, stays eager rather than pay a compilation for each."""
        self._own_call = compiler(self._own_call)
        return self

    def kernel_views(self, params: torch.Tensor) -> list[torch.Tensor]:
        views = params.split(self.sizes, dim=1)
        return [views[i] for i in self.kernels]

    def state_tensors(self) -> list[torch.Tensor]:
        """Everything a training step changes in place (for undoing CUDA-graph warm-up steps)."""
        return [self.params, *self.buffers.values()]

    @torch.no_grad()
    def model_rows(self, k: int, copy: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Model k's share as it is now: its (n_params,) weights and its buffers; a copy by default."""
        params = self.params.detach()[k]
        buffers = {n: b[k] for n, b in self.buffers.items() if n not in self._choices}
        if copy:
            params, buffers = params.clone(), {n: b.clone() for n, b in buffers.items()}
        return params, buffers

    @torch.no_grad()
    def write_model(self, model: nn.Module, rows: tuple[torch.Tensor, dict[str, torch.Tensor]]) -> None:
        """Write one model's rows (`model_rows`) into an ordinary model of the stack's architecture."""
        params, buffers = rows
        own = dict(model.named_parameters())
        for name, view in zip(self.names, params.split(self.sizes)):
            own[name].copy_(view.view_as(own[name]))
        own_buffers = dict(model.named_buffers())
        for name, value in buffers.items():
            own_buffers[name].copy_(value)

    @torch.no_grad()
    def unstack_into(self, models: Sequence[nn.Module]) -> None:
        for k, model in enumerate(models):
            self.write_model(model, self.model_rows(k, copy=False))
