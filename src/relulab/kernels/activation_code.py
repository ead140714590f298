"""The activations relulab's Triton kernels apply, switched on the small integer code each model's layer is
given (`relulab.zoo.activations.KERNEL_CODES`: the codes come from the activation registry).

Both kernel sets call these helpers: the fused MLP step (`relulab.kernels.fused_triton`) with one model's code,
the stacked convolutions (`relulab.kernels.conv_triton`) with one model's code in the forward and a code per
column in the activation's backward. The derivative is taken from the activation's output y, as the PyTorch
reference (`Activation.output_grad`) and PyTorch's own backward compute it; any other code is the identity.
"""
from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice

from relulab.zoo.activations import KERNEL_CODES

RELU: tl.constexpr = tl.constexpr(KERNEL_CODES["relu"])
SIGMOID: tl.constexpr = tl.constexpr(KERNEL_CODES["sigmoid"])
TANH: tl.constexpr = tl.constexpr(KERNEL_CODES["tanh"])


@triton.jit
def activate(z, code):
    """act(z) for one model's code."""
    if code == RELU:
        z = tl.maximum(z, 0.0)
    elif code == SIGMOID:
        z = 1.0 / (1.0 + tl.exp(-z))
    elif code == TANH:
        z = libdevice.tanh(z)
    return z


@triton.jit
def activate_by_select(z, code):
    """`activate` as selects rather than branches: every activation computed, one kept. The run kernels' forward
    (relulab.kernels.fused_triton) carries its activations from one layer's product into the next, and Triton 3.6
    fails to compile such a loop when the product's input comes out of a branch (in its `TritonGPUPrefetch` pass)."""
    return tl.where(code == RELU, tl.maximum(z, 0.0), tl.where(code == SIGMOID, 1.0 / (1.0 + tl.exp(-z)),
                                                               tl.where(code == TANH, libdevice.tanh(z), z)))


@triton.jit
def activation_grad(y, code):
    """act'(x) from the output y = act(x), for one model's code."""
    d = tl.full(y.shape, 1.0, tl.float32)
    if code == RELU:
        d = tl.where(y > 0, 1.0, 0.0)
    elif code == SIGMOID:
        d = (1.0 - y) * y
    elif code == TANH:
        d = 1.0 - y * y
    return d


@triton.jit
def activation_grad_columns(y, code):
    """activation_grad with a code per column (the activation of that column's model).

    The same derivatives as selects, since a tensor of codes cannot branch. The fused kernel keeps the branches
    of `activation_grad`: through these selects it would compute every derivative and compile to other machine
    code (its PTX for sm_90 differs), whose speed was not measured."""
    relu = tl.where(y > 0, 1.0, 0.0)
    return tl.where(code == RELU, relu, tl.where(code == SIGMOID, (1.0 - y) * y, tl.where(code == TANH, 1.0 - y * y,
                                                                                           1.0)))
