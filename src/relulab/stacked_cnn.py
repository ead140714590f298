"""K seed-cnns of the same shape as one stacked model, for training them together (`relulab.pack`).

One seed-cnn leaves an H100 mostly idle, and cuDNN's kernels suit its narrow layers poorly. A stack holds
K models' weights in one flat (K, n) leaf (`relulab.stacking`), as `pack.StackedMLP` does, and runs every layer for all of them
at once on activations laid out (N, H, W, K, C): model k's channel c is channel k*C + c. In that layout

- each 3x3 convolution is one launch of `relulab.conv_triton`'s kernels on CUDA (forward, input gradient
  and weight gradient), with bf16 products (the first layer's 3 input channels padded with zeros to 16);
  on the CPU it is PyTorch's grouped convolution, which is the same maths; the 1x1 head is a batched
  matrix product;
- batch norm, max-pooling and the activations are single PyTorch kernels over the K*C channels.

Each model keeps its own batch order, initialization and learning rate, so a stack reproduces K separate
runs up to float rounding (tests/test_stacked_cnn.py).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .models import Slot, SlotNet
from .stacking import Op, StackedWeights


# The Triton convolution as a PyTorch operator of its own: autograd calls its backward, and torch.compile
# treats it as one opaque call and fuses everything around it (batch norm, activations, pooling).
# The weight comes in fp32 and PyTorch's layout (K, COUT, CIN, KS, KS); the kernels take it in bf16 as
# (K, COUT, KS, KS, CIN), cast in the forward and again in the backward (a custom operator's backward
# sees only its inputs; the cast is about 1.1M values a model), and its gradient goes back in fp32.
def _kernel_weight(weight: torch.Tensor) -> torch.Tensor:
    return weight.permute(0, 1, 3, 4, 2).to(torch.bfloat16, memory_format=torch.contiguous_format)


@torch.library.custom_op("relulab::stacked_conv", mutates_args=())
def _triton_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    from . import conv_triton
    return conv_triton.conv_forward(x.contiguous(), _kernel_weight(weight), bias.float().contiguous())


@_triton_conv.register_fake
def _(x, weight, bias):
    n, h, w, k, _ = x.shape
    cout, ks = weight.shape[1], weight.shape[3]
    return x.new_empty(n, h - ks + 1, w - ks + 1, k, cout)


@torch.library.custom_op("relulab::stacked_conv_backward", mutates_args=())
def _triton_conv_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                          input_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from . import conv_triton
    dy, x, w16 = dy.to(torch.bfloat16).contiguous(), x.contiguous(), _kernel_weight(weight)
    # Without an input gradient (the first layer) dx is an empty placeholder: an operator must return tensors.
    dx = conv_triton.conv_dgrad(dy, w16, x.shape[1], x.shape[2]) if input_grad else x.new_empty(0)
    dw = conv_triton.conv_wgrad(x, dy, w16.shape[2]).permute(0, 1, 4, 2, 3).contiguous()
    return dx, dw, dy.sum((0, 1, 2), dtype=torch.float32)


@_triton_conv_backward.register_fake
def _(dy, x, weight, input_grad):
    dx = torch.empty_like(x) if input_grad else x.new_empty(0)
    return dx, torch.empty_like(weight, dtype=torch.float32), dy.new_empty(weight.shape[:2], dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight)
    ctx.input_grad = x.requires_grad


def _backward(ctx, dy):
    x, weight = ctx.saved_tensors
    dx, dw, db = _triton_conv_backward(dy, x, weight, ctx.input_grad)
    return (dx if ctx.input_grad else None), dw, db


_triton_conv.register_autograd(_backward, setup_context=_setup_context)


def _grouped_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The same convolution as one PyTorch grouped convolution (a group per model)."""
    n, h, w, k, cin = x.shape
    cout = weight.shape[1]
    channels_last = x.reshape(n, h, w, k * cin).permute(0, 3, 1, 2)
    out = F.conv2d(channels_last, weight.reshape(k * cout, *weight.shape[2:]), bias.reshape(-1), groups=k)
    return out.permute(0, 2, 3, 1).reshape(n, out.shape[2], out.shape[3], k, cout)


def stacked_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, triton_kernels: bool) -> torch.Tensor:
    """Convolve each model's input with its own weight: x (N, H, W, K, CIN), weight (K, COUT, CIN, KS, KS),
    bias (K, COUT) -> (N, HO, WO, K, COUT)."""
    cout, cin, size = weight.shape[1], weight.shape[2], weight.shape[3]
    if size == 1:  # the 1x1 head: a batched matrix product (cuDNN's grouped 1x1 convolution is slow)
        return torch.einsum("nhwkc,koc->nhwko", x, weight[..., 0, 0]) + bias
    if triton_kernels:
        from . import conv_triton
        if cin < 16 and conv_triton.supports(16, cout):
            # The first layer's 3 input channels, padded with zeros to the kernels' smallest block: 5x the
            # products of a layer that has 0.6% of the model's, instead of cuDNN's grouped convolution,
            # which took about a tenth of the step. The padding's gradient is dropped by F.pad's backward.
            x, weight, cin = F.pad(x, (0, 16 - cin)), F.pad(weight, (0, 0, 0, 0, 0, 16 - cin)), 16
        if conv_triton.supports(cin, cout):
            return _triton_conv(x.to(torch.bfloat16), weight, bias)
    return _grouped_conv(x, weight, bias)


def _channels(h: torch.Tensor) -> torch.Tensor:
    """(N, H, W, K, C) seen as an (N, K*C, H, W) channels-last batch, as PyTorch's norm and pool kernels take it."""
    n, height, width, k, c = h.shape
    flat = h.reshape(n, height, width, k * c).permute(0, 3, 1, 2)
    # PyTorch's CPU batch norm is about 20x less exact on channels-last input (one-pass variance); on the CPU
    # the stack is a reference for tests, so it takes the exact path.
    return flat if flat.is_cuda else flat.contiguous()


def _unchannels(flat: torch.Tensor, k: int) -> torch.Tensor:
    n, kc, height, width = flat.shape
    return flat.permute(0, 2, 3, 1).reshape(n, height, width, k, kc // k)


class StackedCNN(StackedWeights):
    """K same-shape seed-cnns (any activation per slot and model) as one set of stacked weights."""

    flat_input = False  # the pack's steps pass images as they are

    def __init__(self, models: Sequence[SlotNet], triton_kernels: bool):
        super().__init__(models)
        self.triton_kernels = triton_kernels
        for index, layers in enumerate(zip(*(m.body for m in models))):
            first = layers[0]
            if isinstance(first, (nn.Conv2d, nn.BatchNorm2d)):
                self._add_layer("conv" if isinstance(first, nn.Conv2d) else "bn", index, layers)
            elif isinstance(first, Slot):
                self._add_activation(layers)
            elif isinstance(first, nn.MaxPool2d):
                self.ops.append(Op("maxpool", module=first))
            elif isinstance(first, (nn.AdaptiveAvgPool2d, nn.Flatten)):
                continue  # the head in forward: average over positions, then (K, N, classes)
            else:
                raise TypeError(f"cannot stack layer {type(first).__name__}")
        self._finish()

    def forward(self, params: torch.Tensor, x: torch.Tensor, training: bool) -> torch.Tensor:
        """x: (K, N, C, H, W), or (N, C, H, W) shared by all models -> logits (K, N, classes)."""
        views = params.split(self.sizes, dim=1)
        if x.dim() == 4:
            h = x.permute(0, 2, 3, 1).unsqueeze(3).expand(-1, -1, -1, self.k, -1)
        else:
            h = x.permute(1, 3, 4, 0, 2)
        h = h.contiguous()
        for op in self.ops:
            if op.kind == "conv":
                h = stacked_conv(h, views[op.weight].view(self.k, *op.shape), views[op.bias], self.triton_kernels)
            elif op.kind == "act":
                h = self._activate(h, op, model_dim=3)
            elif op.kind == "bn":
                mean, var = self.running[op.running]
                out = F.batch_norm(_channels(h), mean, var, views[op.weight].reshape(-1), views[op.bias].reshape(-1),
                                   training, op.module.momentum, op.module.eps)
                h = _unchannels(out, self.k)
            else:
                h = _unchannels(F.max_pool2d(_channels(h), op.module.kernel_size), self.k)
        return h.mean((1, 2)).transpose(0, 1)  # AdaptiveAvgPool2d(1) and Flatten, for each model
