"""K seed-cnns of the same shape as one stacked model, for training them together (`relulab.packing`).

One seed-cnn leaves an H100 mostly idle, and cuDNN's kernels suit its narrow layers poorly. A stack holds
K models' weights in one flat (K, n) leaf (`relulab.packing.stacking`), as `StackedMLP` does, and runs every layer for all of them
at once on activations laid out (N, H, W, K, C): model k's channel c is channel k*C + c. In that layout

- each 3x3 convolution is one launch of `relulab.kernels.conv_triton`'s kernels on CUDA (forward, input gradient
  and weight gradient), with bf16 products;
  on the CPU it is PyTorch's grouped convolution, which is the same maths; the 1x1 head is a batched
  matrix product;
- batch norm, max-pooling and the activations are single PyTorch kernels over the K*C channels.

Each model keeps its own batch order, initialization and learning rate, so a stack reproduces K separate
runs up to float rounding (tests/packing/test_stacked_cnn.py).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from relulab.zoo import activations
from relulab.zoo.activations import KERNEL_CODES
from relulab.zoo.models import Slot, SlotNet
from relulab.packing.stacking import Op, StackedWeights


# The kernels' operand type. tests/helpers/stacked_cnn_check.py sets float32 to run a whole stack, backward included,
# in Triton's CPU interpreter, which computes bf16 products wrongly.
KERNEL_DTYPE = torch.bfloat16


# The Triton convolution as a PyTorch operator of its own: autograd calls its backward, and torch.compile
# treats it as one opaque call and fuses everything around it (batch norm, activations, pooling).
# An operator runs eagerly, so it does only what the kernels must; the steps around them are written in the
# traced code, where the compiled step fuses them with their neighbours instead of launching each alone:
# - the weight's cast to the kernels' bf16 (K, COUT, KS, KS, CIN) (`_kernel_weight`), with the folding that
#   computes the weight; the operator takes that copy, saved for its backward, and the fp32 weight, which it
#   does not read but whose gradient it returns in fp32 (a gradient takes its input's dtype);
# - the sums of the kernels' partial sums: batch-norm statistics per row tile, the bias gradient per row
#   tile, the weight gradient per split of the positions (`_weight_gradient`).
def _kernel_weight(weight: torch.Tensor) -> torch.Tensor:
    # (.to of the same dtype returns the permuted view itself, whatever memory format it is asked for)
    return weight.detach().permute(0, 1, 3, 4, 2).to(KERNEL_DTYPE, memory_format=torch.contiguous_format).contiguous()


def _weight_gradient(parts: torch.Tensor) -> torch.Tensor:
    """The weight gradient in PyTorch's layout (K, COUT, CIN, KS, KS) from conv_triton.conv_wgrad_partial's parts."""
    return parts.sum(1).permute(0, 1, 4, 2, 3)


def _conv_output_like(x: torch.Tensor, w16: torch.Tensor) -> torch.Tensor:
    """An empty (N, HO, WO, K, COUT) output of x's convolution with w16, for the operators' fake versions."""
    n, h, w, k, _ = x.shape
    cout, ks = w16.shape[1], w16.shape[2]
    return x.new_empty(n, h - ks + 1, w - ks + 1, k, cout)


# How many partial sums an operator returns (row tiles, splits of the positions) follows from the kernels' tile
# sizes, so the traced code passes those counts to the operators as arguments rather than each deriving them:
# torch.compile keeps compiled graphs on disk keyed by their code, in which arguments appear but the shapes a fake
# kernel gives do not. A graph compiled by a relulab with other tile sizes was otherwise reused, and the first step
# stopped on an output of another size (seen on an H200, 2026-12-03, after conv_triton.CONFIGS changed).
def _split(x: torch.Tensor, w16: torch.Tensor) -> int:
    """Into how many parts the weight-gradient kernel splits the positions, for x and w16 of these shapes."""
    from relulab.kernels import conv_triton
    return conv_triton.wgrad_split(x.shape, w16.shape[1], w16.shape[2])


def _row_tiles(x: torch.Tensor, weight: torch.Tensor) -> int:
    """How many row tiles' sums the forward kernel gives for x and a weight (K, COUT, CIN, KS, KS) of these shapes."""
    from relulab.kernels import conv_triton
    return conv_triton.forward_row_tiles(x.shape, weight.shape[1], weight.shape[3])


def _act_tiles(a: torch.Tensor) -> int:
    """How many row tiles' bias gradients the activation's backward kernel gives for an a of this shape."""
    from relulab.kernels import conv_triton
    return conv_triton.act_backward_row_tiles(a.shape)


def _check_count(what: str, got: int, traced: int) -> None:
    if got != traced:
        raise RuntimeError(f"the Triton convolution made {got} {what}, the step was traced for {traced}")


def _conv_gradients(dy: torch.Tensor, x: torch.Tensor, w16: torch.Tensor, input_grad: bool, split: int):
    """(dx, weight-gradient parts) of the convolution from dy (bf16, contiguous). Without an input gradient
    (the first layer) dx is an empty placeholder: an operator must return tensors."""
    from relulab.kernels import conv_triton
    dx = conv_triton.conv_dgrad(dy, w16, x.shape[1], x.shape[2]) if input_grad else x.new_empty(0)
    parts = conv_triton.conv_wgrad_partial(x, dy, w16.shape[2])
    _check_count("splits of the positions", parts.shape[1], split)
    return dx, parts


def _gradients_like(x: torch.Tensor, w16: torch.Tensor, input_grad: bool, split: int):
    """Empty (dx, weight-gradient parts) as the backward operators return them, for their fake versions."""
    k, cout, ks, _, cin = w16.shape
    dx = torch.empty_like(x) if input_grad else x.new_empty(0)
    return dx, x.new_empty(k, split, cout, ks, ks, cin, dtype=torch.float32)


@torch.library.custom_op("relulab::stacked_conv", mutates_args=())
def _triton_conv(x: torch.Tensor, weight: torch.Tensor, w16: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    from relulab.kernels import conv_triton
    return conv_triton.conv_forward(x, w16, bias)


@_triton_conv.register_fake
def _(x, weight, w16, bias):
    return _conv_output_like(x, w16)


@torch.library.custom_op("relulab::stacked_conv_backward", mutates_args=())
def _triton_conv_backward(dy: torch.Tensor, x: torch.Tensor, w16: torch.Tensor,
                          input_grad: bool, split: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _conv_gradients(dy, x, w16, input_grad, split)


@_triton_conv_backward.register_fake
def _(dy, x, w16, input_grad, split):
    return _gradients_like(x, w16, input_grad, split)


def _setup_context(ctx, inputs, output):
    x, _, w16, _ = inputs
    ctx.save_for_backward(x, w16)
    ctx.input_grad = x.requires_grad


def _backward(ctx, dy):
    x, w16 = ctx.saved_tensors
    dx, dw_parts = _triton_conv_backward(dy.to(KERNEL_DTYPE).contiguous(), x, w16, ctx.input_grad, _split(x, w16))
    db = dy.sum((0, 1, 2), dtype=torch.float32)
    return (dx if ctx.input_grad else None), _weight_gradient(dw_parts), None, db


_triton_conv.register_autograd(_backward, setup_context=_setup_context)


# Convolution, bias and activation in one kernel, which also sums each channel's outputs and their squares
# per row tile, for the batch norm that follows (sums=True; else the second output is empty). Its backward
# takes the gradients of the activation and of the sums: one kernel turns them into the gradient before the
# activation and the bias's (conv_triton.activation_backward_partial), then the convolution's two gradient kernels.
@torch.library.custom_op("relulab::stacked_conv_act", mutates_args=())
def _triton_conv_act(x: torch.Tensor, weight: torch.Tensor, w16: torch.Tensor, bias: torch.Tensor,
                     codes: torch.Tensor, sums: bool, row_tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    from relulab.kernels import conv_triton
    if not sums:
        return conv_triton.conv_forward(x, w16, bias, codes=codes), bias.new_empty(0)
    a, partial_sums = conv_triton.conv_forward_with_partial_sums(x, w16, bias, codes)
    _check_count("row tiles of sums", partial_sums.shape[1], row_tiles)
    return a, partial_sums


@_triton_conv_act.register_fake
def _(x, weight, w16, bias, codes, sums, row_tiles):
    k, cout = w16.shape[0], w16.shape[1]
    sums_shape = (2, row_tiles, k, cout) if sums else (0,)
    return _conv_output_like(x, w16), x.new_empty(sums_shape, dtype=torch.float32)


@torch.library.custom_op("relulab::stacked_conv_act_backward", mutates_args=())
def _triton_conv_act_backward(da: torch.Tensor, dsums: torch.Tensor, x: torch.Tensor, w16: torch.Tensor,
                              a: torch.Tensor, codes: torch.Tensor,
                              input_grad: bool, split: int,
                              act_tiles: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from relulab.kernels import conv_triton
    dpre, db_parts = conv_triton.activation_backward_partial(da, a, dsums, codes)
    _check_count("row tiles of bias gradients", db_parts.shape[0], act_tiles)
    return *_conv_gradients(dpre, x, w16, input_grad, split), db_parts


@_triton_conv_act_backward.register_fake
def _(da, dsums, x, w16, a, codes, input_grad, split, act_tiles):
    db_parts = x.new_empty(act_tiles, *a.shape[3:], dtype=torch.float32)
    return *_gradients_like(x, w16, input_grad, split), db_parts


def _setup_conv_act(ctx, inputs, output):
    x, _, w16, _, codes, _, _ = inputs
    ctx.save_for_backward(x, w16, output[0], codes)
    ctx.input_grad = x.requires_grad


def _conv_act_backward(ctx, da, dsums):
    x, w16, a, codes = ctx.saved_tensors
    da = torch.zeros_like(a) if da is None else da.to(a.dtype).contiguous()
    if dsums is None or dsums.numel() == 0:  # no batch norm took the sums
        dsums = a.new_zeros(2, *a.shape[3:], dtype=torch.float32)
    else:  # each row tile's sums went into the statistics alike, so each has the statistics' gradient
        dsums = dsums[:, 0].contiguous()
    dx, dw_parts, db_parts = _triton_conv_act_backward(da, dsums, x, w16, a, codes, ctx.input_grad, _split(x, w16),
                                                       _act_tiles(a))
    return (dx if ctx.input_grad else None), _weight_gradient(dw_parts), None, db_parts.sum(0), None, None, None


_triton_conv_act.register_autograd(_conv_act_backward, setup_context=_setup_conv_act)


def _fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor):
    """The weight and bias that convolve a batch norm's input as the originals convolve its output:
    conv(a * scale + shift, w) + b = conv(a, w * scale) + (b + sum of w * shift), exactly for 'valid'
    convolutions (no padding sees the shift). scale and shift are per model and input channel, (K, CIN)."""
    per_input = (slice(None), None, slice(None), None, None)
    return weight * scale[per_input], bias + (weight * shift[per_input]).sum((2, 3, 4))


def _affine(h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Batch norm's output from its per-model, per-channel scale and shift (K, C), on (N, H, W, K, C), in h's
    dtype as PyTorch's batch norm gives it (bf16 under autocast: the max-pool after it, its backward and the
    scale's gradient then move half the bytes of fp32, about 0.2 ms of a 16-stack's step)."""
    return (h * scale + shift).to(h.dtype)


def _grouped_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The same convolution as one PyTorch grouped convolution (a group per model)."""
    n, h, w, k, cin = x.shape
    cout = weight.shape[1]
    channels_last = x.reshape(n, h, w, k * cin).permute(0, 3, 1, 2)
    out = F.conv2d(channels_last, weight.reshape(k * cout, *weight.shape[2:]), bias.reshape(-1), groups=k)
    return out.permute(0, 2, 3, 1).reshape(n, out.shape[2], out.shape[3], k, cout)


def _triton_operands(x: torch.Tensor, weight: torch.Tensor):
    """(x in bf16, weight) as the Triton kernels take them, or None for a layer they do not take."""
    from relulab.kernels import conv_triton
    cout, cin, ks = weight.shape[1:4]
    if cin < 16 and not conv_triton.supports(cin, cout, ks, input_grad=x.requires_grad) \
            and conv_triton.supports(16, cout):
        # Narrow inputs the kernels do not take as they are (their reduction blocks are at least 16 wide): their
        # channels padded with zeros to 16, whose gradient F.pad's backward drops. A first layer of 3 channels
        # needs none of it: its 27 (tap, channel) fit one block (at 16 channels a layer has 5.3x its products).
        x, weight, cin = F.pad(x, (0, 16 - cin)), F.pad(weight, (0, 0, 0, 0, 0, 16 - cin)), 16
    if not conv_triton.supports(cin, cout, ks, input_grad=x.requires_grad):
        return None
    return x.to(KERNEL_DTYPE).contiguous(), weight


def stacked_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, triton_kernels: bool) -> torch.Tensor:
    """Convolve each model's input with its own weight: x (N, H, W, K, CIN), weight (K, COUT, CIN, KS, KS),
    bias (K, COUT) -> (N, HO, WO, K, COUT)."""
    if weight.shape[3] == 1:  # the 1x1 head: a batched matrix product (cuDNN's grouped 1x1 convolution is slow)
        return torch.einsum("nhwkc,koc->nhwko", x, weight[..., 0, 0]) + bias
    operands = _triton_operands(x, weight) if triton_kernels else None
    if operands is not None:
        x, weight = operands
        return _triton_conv(x, weight, _kernel_weight(weight), bias.float().contiguous())
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
    is. Layers whose activation the kernels lack (`relulab.zoo.activations.KERNEL_CODES`) run unfolded."""

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
                if all(name in KERNEL_CODES for name in names):
                    self.codes[len(self.ops) - 1] = torch.tensor([KERNEL_CODES[n] for n in names],
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

    def largest_batch(self, image_shape: Sequence[int]) -> int:
        """The largest batch of (C, H, W) images whose activations, all K models side by side, the Triton kernels
        can index (conv_triton.MAX_VALUES): 2068 for 16 seed-cnns on 32x32 images, 1034 for 32."""
        from relulab.kernels import conv_triton
        channels, height, width = image_shape
        largest = max(channels, 16) * height * width  # a narrow input may be padded to 16 channels
        for op in self.ops:
            if op.kind == "conv":
                channels, size = op.shape[0], op.shape[2]
                height, width = height - size + 1, width - size + 1
            elif op.kind == "maxpool":
                height, width = height // op.module.kernel_size, width // op.module.kernel_size
            largest = max(largest, channels * height * width)
        return max(1, conv_triton.MAX_VALUES // (largest * self.k))

    def _foldable(self, i: int) -> bool:
        """Whether op i starts a 3x3 conv -> activation -> batch norm that runs as one kernel."""
        if i + 2 >= len(self.ops) or [op.kind for op in self.ops[i:i + 3]] != ["conv", "act", "bn"]:
            return False
        conv, bn = self.ops[i], self.ops[i + 2]
        cout, cin, size = conv.shape[:3]
        if size == 1 or i + 1 not in self.codes or bn.module.momentum is None:
            return False
        from relulab.kernels import conv_triton
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
            x, weight = operands
            a, partial_sums = _triton_conv_act(x, weight, _kernel_weight(weight), bias.float().contiguous(),
                                               self.codes[i + 1], training, _row_tiles(x, weight))
            sums = partial_sums.sum(1) if training else None
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
