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

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import activations
from .fused import ACTIVATION_CODES
from .models import Slot, SlotNet
from .stacking import Op, StackedWeights


# The kernels' operand type. tests/stacked_cnn_check.py sets float32 to run a whole stack, backward included,
# in Triton's CPU interpreter, which computes bf16 products wrongly.
KERNEL_DTYPE = torch.bfloat16


# The Triton convolution as a PyTorch operator of its own: autograd calls its backward, and torch.compile
# treats it as one opaque call and fuses everything around it (batch norm, activations, pooling).
# The weight comes in fp32 and PyTorch's layout (K, COUT, CIN, KS, KS); the kernels take it in bf16 as
# (K, COUT, KS, KS, CIN), cast in the forward and again in the backward (a custom operator's backward
# sees only its inputs; the cast is about 1.1M values a model), and its gradient goes back in fp32.
def _kernel_weight(weight: torch.Tensor) -> torch.Tensor:
    # (.to of the same dtype returns the permuted view itself, whatever memory format it is asked for)
    return weight.permute(0, 1, 3, 4, 2).to(KERNEL_DTYPE, memory_format=torch.contiguous_format).contiguous()


def _conv_output_like(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """An empty (N, HO, WO, K, COUT) output of x's convolution with weight, for the operators' fake versions."""
    n, h, w, k, _ = x.shape
    cout, ks = weight.shape[1], weight.shape[3]
    return x.new_empty(n, h - ks + 1, w - ks + 1, k, cout)


def _conv_gradients(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, input_grad: bool):
    """(dx, dw) of the convolution from dy (bf16, contiguous); dw in fp32 and PyTorch's weight layout.
    Without an input gradient (the first layer) dx is an empty placeholder: an operator must return tensors."""
    from . import conv_triton
    w16 = _kernel_weight(weight)
    dx = conv_triton.conv_dgrad(dy, w16, x.shape[1], x.shape[2]) if input_grad else x.new_empty(0)
    dw = conv_triton.conv_wgrad(x.contiguous(), dy, w16.shape[2]).permute(0, 1, 4, 2, 3).contiguous()
    return dx, dw


def _gradients_like(x: torch.Tensor, weight: torch.Tensor, input_grad: bool):
    """Empty (dx, dw, db) as the backward operators return them, for their fake versions."""
    dx = torch.empty_like(x) if input_grad else x.new_empty(0)
    return dx, torch.empty_like(weight, dtype=torch.float32), x.new_empty(weight.shape[:2], dtype=torch.float32)


@torch.library.custom_op("relulab::stacked_conv", mutates_args=())
def _triton_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    from . import conv_triton
    return conv_triton.conv_forward(x.contiguous(), _kernel_weight(weight), bias.float().contiguous())


@_triton_conv.register_fake
def _(x, weight, bias):
    return _conv_output_like(x, weight)


@torch.library.custom_op("relulab::stacked_conv_backward", mutates_args=())
def _triton_conv_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                          input_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dy = dy.to(KERNEL_DTYPE).contiguous()
    return *_conv_gradients(dy, x, weight, input_grad), dy.sum((0, 1, 2), dtype=torch.float32)


@_triton_conv_backward.register_fake
def _(dy, x, weight, input_grad):
    return _gradients_like(x, weight, input_grad)


def _setup_context(ctx, inputs, output):
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight)
    ctx.input_grad = x.requires_grad


def _backward(ctx, dy):
    x, weight = ctx.saved_tensors
    dx, dw, db = _triton_conv_backward(dy, x, weight, ctx.input_grad)
    return (dx if ctx.input_grad else None), dw, db


_triton_conv.register_autograd(_backward, setup_context=_setup_context)


# Convolution, bias and activation in one kernel, which also sums each channel's outputs and their squares
# for the batch norm that follows (sums=True; else the second output is empty). Its backward takes the
# gradients of both outputs: one kernel turns them into the gradient before the activation and the bias's
# (conv_triton.activation_backward), then the convolution's two gradient kernels.
@torch.library.custom_op("relulab::stacked_conv_act", mutates_args=())
def _triton_conv_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, codes: torch.Tensor,
                     sums: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from . import conv_triton
    x, w16, bias = x.contiguous(), _kernel_weight(weight), bias.float().contiguous()
    if sums:
        return conv_triton.conv_forward_with_sums(x, w16, bias, codes)
    return conv_triton.conv_forward(x, w16, bias, codes=codes), bias.new_empty(0)


@_triton_conv_act.register_fake
def _(x, weight, bias, codes, sums):
    sums_shape = (2, x.shape[3], weight.shape[1]) if sums else (0,)
    return _conv_output_like(x, weight), x.new_empty(sums_shape, dtype=torch.float32)


@torch.library.custom_op("relulab::stacked_conv_act_backward", mutates_args=())
def _triton_conv_act_backward(da: torch.Tensor, dsums: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                              a: torch.Tensor, codes: torch.Tensor,
                              input_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from . import conv_triton
    dpre, db = conv_triton.activation_backward(da.to(a.dtype).contiguous(), a, dsums.contiguous(), codes)
    return *_conv_gradients(dpre, x, weight, input_grad), db


@_triton_conv_act_backward.register_fake
def _(da, dsums, x, weight, a, codes, input_grad):
    return _gradients_like(x, weight, input_grad)


def _setup_conv_act(ctx, inputs, output):
    x, weight, _, codes, _ = inputs
    ctx.save_for_backward(x, weight, output[0], codes)
    ctx.input_grad = x.requires_grad


def _conv_act_backward(ctx, da, dsums):
    x, weight, a, codes = ctx.saved_tensors
    if da is None:
        da = torch.zeros_like(a)
    if dsums is None or dsums.numel() == 0:  # no batch norm took the sums
        dsums = a.new_zeros(2, *a.shape[3:], dtype=torch.float32)
    dx, dw, db = _triton_conv_act_backward(da, dsums, x, weight, a, codes, ctx.input_grad)
    return (dx if ctx.input_grad else None), dw, db, None, None


_triton_conv_act.register_autograd(_conv_act_backward, setup_context=_setup_conv_act)


def _fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor):
    """The weight and bias that convolve a batch norm's input as the originals convolve its output:
    conv(a * scale + shift, w) + b = conv(a, w * scale) + (b + sum of w * shift), exactly for 'valid'
    convolutions (no padding sees the shift). scale and shift are per model and input channel, (K, CIN)."""
    per_input = (slice(None), None, slice(None), None, None)
    return weight * scale[per_input], bias + (weight * shift[per_input]).sum((2, 3, 4))


def _affine(h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Batch norm's output from its per-model, per-channel scale and shift (K, C), on (N, H, W, K, C)."""
    return h * scale + shift


def _grouped_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The same convolution as one PyTorch grouped convolution (a group per model)."""
    n, h, w, k, cin = x.shape
    cout = weight.shape[1]
    channels_last = x.reshape(n, h, w, k * cin).permute(0, 3, 1, 2)
    out = F.conv2d(channels_last, weight.reshape(k * cout, *weight.shape[2:]), bias.reshape(-1), groups=k)
    return out.permute(0, 2, 3, 1).reshape(n, out.shape[2], out.shape[3], k, cout)


def _triton_operands(x: torch.Tensor, weight: torch.Tensor):
    """(x in bf16, weight) as the Triton kernels take them, or None for a layer they do not take."""
    from . import conv_triton
    cout, cin = weight.shape[1], weight.shape[2]
    if cin < 16 and conv_triton.supports(16, cout):
        # The first layer's 3 input channels, padded with zeros to the kernels' smallest block: 5x the
        # products of a layer that has 0.6% of the model's, instead of cuDNN's grouped convolution,
        # which took about a tenth of the step. The padding's gradient is dropped by F.pad's backward.
        x, weight, cin = F.pad(x, (0, 16 - cin)), F.pad(weight, (0, 0, 0, 0, 0, 16 - cin)), 16
    return (x.to(KERNEL_DTYPE), weight) if conv_triton.supports(cin, cout) else None


def stacked_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, triton_kernels: bool) -> torch.Tensor:
    """Convolve each model's input with its own weight: x (N, H, W, K, CIN), weight (K, COUT, CIN, KS, KS),
    bias (K, COUT) -> (N, HO, WO, K, COUT)."""
    if weight.shape[3] == 1:  # the 1x1 head: a batched matrix product (cuDNN's grouped 1x1 convolution is slow)
        return torch.einsum("nhwkc,koc->nhwko", x, weight[..., 0, 0]) + bias
    operands = _triton_operands(x, weight) if triton_kernels else None
    if operands is not None:
        return _triton_conv(*operands, bias)
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
    """K same-shape seed-cnns (any activation per slot and model) as one set of stacked weights.

    With `fold_batchnorm` (the default with the Triton kernels), each conv -> activation -> batch norm runs
    as one kernel that also sums the batch norm's statistics, and the batch norm is then applied by the
    next convolution, folded into its weights (`_fold_batchnorm`): the batch norm's own passes over the
    activations, forward and backward, are gone. Where a max-pool or the head comes next, it is applied as it
    is. Layers whose activation the kernels lack (`relulab.fused.ACTIVATION_CODES`) run unfolded."""

    flat_input = False  # the pack's steps pass images as they are

    def __init__(self, models: Sequence[SlotNet], triton_kernels: bool, fold_batchnorm: Optional[bool] = None):
        super().__init__(models)
        self.triton_kernels = triton_kernels
        self.codes: dict[int, torch.Tensor] = {}  # op index of an activation -> (K,) activation codes
        device = models[0].body[0].weight.device
        for index, layers in enumerate(zip(*(m.body for m in models))):
            first = layers[0]
            if isinstance(first, (nn.Conv2d, nn.BatchNorm2d)):
                self._add_layer("conv" if isinstance(first, nn.Conv2d) else "bn", index, layers)
            elif isinstance(first, Slot):
                self._add_activation(layers)
                names = [activations.canonical_name(slot.spec) for slot in layers]
                if all(name in ACTIVATION_CODES for name in names):
                    self.codes[len(self.ops) - 1] = torch.tensor([ACTIVATION_CODES[n] for n in names],
                                                                 dtype=torch.int32, device=device)
            elif isinstance(first, nn.MaxPool2d):
                self.ops.append(Op("maxpool", module=first))
            elif isinstance(first, (nn.AdaptiveAvgPool2d, nn.Flatten)):
                continue  # the head in forward: average over positions, then (K, N, classes)
            else:
                raise TypeError(f"cannot stack layer {type(first).__name__}")
        self._finish()
        fold = triton_kernels if fold_batchnorm is None else fold_batchnorm
        self.folded = {i for i in range(len(self.ops)) if fold and self._foldable(i)}

    def _foldable(self, i: int) -> bool:
        """Whether op i starts a 3x3 conv -> activation -> batch norm that runs as one kernel."""
        if i + 2 >= len(self.ops) or [op.kind for op in self.ops[i:i + 3]] != ["conv", "act", "bn"]:
            return False
        conv, bn = self.ops[i], self.ops[i + 2]
        cout, cin, size = conv.shape[:3]
        if size == 1 or i + 1 not in self.codes or bn.module.momentum is None:
            return False
        from . import conv_triton
        return not self.triton_kernels or conv_triton.supports(max(cin, 16), cout)

    def forward(self, params: torch.Tensor, x: torch.Tensor, training: bool) -> torch.Tensor:
        """x: (K, N, C, H, W), or (N, C, H, W) shared by all models -> logits (K, N, classes)."""
        views = params.split(self.sizes, dim=1)
        if x.dim() == 4:
            h = x.permute(0, 2, 3, 1).unsqueeze(3).expand(-1, -1, -1, self.k, -1)
        else:
            h = x.permute(1, 3, 4, 0, 2)
        h = h.contiguous()
        i, pending = 0, None  # pending: the (scale, shift) of a batch norm the next convolution folds in
        while i < len(self.ops):
            if i in self.folded:
                h, norm = self._conv_act_batchnorm(views, h, i, pending, training)
                i += 3
                pending = norm if i in self.folded else None
                if pending is None:
                    h = _affine(h, *norm)
            else:
                h = self._layer(views, h, self.ops[i], training)
                i += 1
        return h.mean((1, 2)).transpose(0, 1)  # AdaptiveAvgPool2d(1) and Flatten, for each model

    def _layer(self, views, h: torch.Tensor, op: Op, training: bool) -> torch.Tensor:
        if op.kind == "conv":
            return stacked_conv(h, views[op.weight].view(self.k, *op.shape), views[op.bias], self.triton_kernels)
        if op.kind == "act":
            return self._activate(h, op, model_dim=3)
        if op.kind == "bn":
            mean, var = self.running[op.running]
            out = F.batch_norm(_channels(h), mean, var, views[op.weight].reshape(-1), views[op.bias].reshape(-1),
                               training, op.module.momentum, op.module.eps)
            return _unchannels(out, self.k)
        return _unchannels(F.max_pool2d(_channels(h), op.module.kernel_size), self.k)

    def _conv_act_batchnorm(self, views, h, i: int, pending, training: bool):
        """Ops i..i+2 (conv, activation, batch norm): the activation's output and the batch norm's (scale, shift)."""
        conv, bn = self.ops[i], self.ops[i + 2]
        weight, bias = views[conv.weight].view(self.k, *conv.shape), views[conv.bias]
        if pending is not None:
            weight, bias = _fold_batchnorm(weight, bias, *pending)
        operands = _triton_operands(h, weight) if self.triton_kernels else None
        if operands is not None:
            a, sums = _triton_conv_act(*operands, bias, self.codes[i + 1], training)
        else:  # the same in PyTorch operations (the CPU's reference)
            a = self._activate(_grouped_conv(h, weight, bias), self.ops[i + 1], model_dim=3)
            sums = torch.stack([a.sum((0, 1, 2)), (a * a).sum((0, 1, 2))]).float() if training else None
        count = a.shape[0] * a.shape[1] * a.shape[2]
        return a, self._batchnorm_scale_shift(views, bn, sums, count, training)

    def _batchnorm_scale_shift(self, views, bn: Op, sums, count: int, training: bool):
        """Batch norm as a per-model, per-channel (scale, shift), from the batch's sums in training (which
        also update the running statistics, as PyTorch's batch norm does) or from the running statistics."""
        running_mean, running_var = self.running[bn.running]
        if training:
            mean = sums[0] / count
            var = (sums[1] / count - mean * mean).clamp_min(0)  # one pass; fp32 sums of O(1) values
            with torch.no_grad():
                running_mean.lerp_(mean.reshape(-1), bn.module.momentum)
                running_var.lerp_(var.reshape(-1) * (count / (count - 1)), bn.module.momentum)
        else:
            mean, var = running_mean.view(self.k, -1), running_var.view(self.k, -1)
        scale = views[bn.weight] * torch.rsqrt(var + bn.module.eps)
        return scale, views[bn.bias] - mean * scale
