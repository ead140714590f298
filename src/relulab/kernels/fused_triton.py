"""Triton kernels for the fused MLP stack (`relulab.packing.fused`): one kernel per layer forward, one backward.

Imported only on CUDA (Triton comes with PyTorch's CUDA builds). Every kernel has a PyTorch
reference in `relulab.packing.fused` with the same arguments, and `benchmarks/bench_speed.py --parts
check` compares the two on the GPU.

Shapes, for K stacked models and a batch of B: activations are contiguous (K, B, width);
weights, biases and their gradients are views of the stack's flat (K, n) parameter and gradient
tensors, so model k's block starts at k * row_stride. The products are fp32 FMA
(`input_precision="ieee"`), the same arithmetic as PyTorch's fp32 reference, unless the stack's
spec asks for "tf32" (tensor cores, inputs rounded to TensorFloat-32).
"""
from __future__ import annotations

import triton
import triton.language as tl

from relulab.kernels.activation_code import activate, activation_grad
from relulab.kernels.launches import launch


@triton.jit
def _forward_kernel(x_ptr, w_ptr, b_ptr, y_ptr, code_ptr, B, IN, OUT, row_stride,
                    BLOCK_B: tl.constexpr, BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr, PRECISION: tl.constexpr):
    """y[k] = act_k(x[k] @ w[k].T + b[k]) for one model k and one block of output columns."""
    k = tl.program_id(0)
    rb = tl.arange(0, BLOCK_B)
    ro = tl.program_id(1) * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    x_ptr += k * B * IN
    w_ptr += k * row_stride
    acc = tl.zeros((BLOCK_B, BLOCK_OUT), tl.float32)
    for start in range(0, IN, BLOCK_IN):
        ri = start + tl.arange(0, BLOCK_IN)
        x = tl.load(x_ptr + rb[:, None] * IN + ri[None, :], mask=(rb[:, None] < B) & (ri[None, :] < IN), other=0.0)
        wt = tl.load(w_ptr + ro[None, :] * IN + ri[:, None], mask=(ro[None, :] < OUT) & (ri[:, None] < IN),
                     other=0.0)
        acc = tl.dot(x, wt, acc, input_precision=PRECISION)
    bias = tl.load(b_ptr + k * row_stride + ro, mask=ro < OUT, other=0.0)
    y = activate(acc + bias[None, :], tl.load(code_ptr + k))
    tl.store(y_ptr + k * B * OUT + rb[:, None] * OUT + ro[None, :], y, mask=(rb[:, None] < B) & (ro[None, :] < OUT))


@triton.jit
def _backward_kernel(g_ptr, y_ptr, x_ptr, w_ptr, code_ptr, dw_ptr, db_ptr, dx_ptr, B, IN, OUT, row_stride,
                     BLOCK_B: tl.constexpr, BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr,
                     WRITE_DX: tl.constexpr, PRECISION: tl.constexpr):
    """For one model k and one block of input columns: delta = g * act'(y), then
    dx[:, block] = delta @ w[:, block], dw[:, block] = delta.T @ x[:, block], and (block 0) db = sum(delta).

    Each program reads only its own columns of w, so dx and dw come from one pass over delta."""
    k = tl.program_id(0)
    block = tl.program_id(1)
    rb = tl.arange(0, BLOCK_B)
    ri = block * BLOCK_IN + tl.arange(0, BLOCK_IN)
    code = tl.load(code_ptr + k)
    rows = rb[:, None] < B
    x = tl.load(x_ptr + k * B * IN + rb[:, None] * IN + ri[None, :], mask=rows & (ri[None, :] < IN), other=0.0)
    dx = tl.zeros((BLOCK_B, BLOCK_IN), tl.float32)
    for start in range(0, OUT, BLOCK_OUT):
        ro = start + tl.arange(0, BLOCK_OUT)
        tile = rows & (ro[None, :] < OUT)
        g = tl.load(g_ptr + k * B * OUT + rb[:, None] * OUT + ro[None, :], mask=tile, other=0.0)
        y = tl.load(y_ptr + k * B * OUT + rb[:, None] * OUT + ro[None, :], mask=tile, other=0.0)
        delta = g * activation_grad(y, code)
        w_tile = (ro[:, None] < OUT) & (ri[None, :] < IN)
        if WRITE_DX:
            w = tl.load(w_ptr + k * row_stride + ro[:, None] * IN + ri[None, :], mask=w_tile, other=0.0)
            dx = tl.dot(delta, w, dx, input_precision=PRECISION)
        dw = tl.dot(tl.trans(delta), x, input_precision=PRECISION)
        tl.store(dw_ptr + k * row_stride + ro[:, None] * IN + ri[None, :], dw, mask=w_tile)
        if block == 0:
            tl.store(db_ptr + k * row_stride + ro, tl.sum(delta, axis=0), mask=ro < OUT)
    if WRITE_DX:
        tl.store(dx_ptr + k * B * IN + rb[:, None] * IN + ri[None, :], dx, mask=rows & (ri[None, :] < IN))


def _block_b(batch: int) -> int:
    return max(16, triton.next_power_of_2(batch))


# Block sizes, warps and stages per product precision, as measured fastest on an H100 for seed 001's
# layers (BENCHMARKS.md, Speed). Backward: software pipelining of its short loop cost 30-50% in fp32.
FORWARD_CONFIG = {"ieee": dict(BLOCK_OUT=32, BLOCK_IN=64, num_warps=4, num_stages=3),
                  "tf32": dict(BLOCK_OUT=16, BLOCK_IN=128, num_warps=4, num_stages=1)}
BACKWARD_CONFIG = {"ieee": dict(BLOCK_OUT=64, BLOCK_IN=32, num_warps=4, num_stages=1),
                   "tf32": dict(BLOCK_OUT=128, BLOCK_IN=32, num_warps=4, num_stages=1)}


def linear_forward(x, w, b, layer, out, precision: str = "ieee") -> None:
    """x (K, B, in) -> out (K, B, out): the fused Linear + activation of every model (`layer`: a fused.Layer)."""
    k, batch, fan_in = x.shape
    fan_out = out.shape[2]
    config = FORWARD_CONFIG[precision]
    launch(_forward_kernel, (k, triton.cdiv(fan_out, config["BLOCK_OUT"])),
        x, w, b, out, layer.codes, batch, fan_in, fan_out, w.stride(0), BLOCK_B=_block_b(batch), PRECISION=precision,
        **config)


def linear_backward(g, y, x, w, layer, dw, db, dx, precision: str = "ieee") -> None:
    """Writes dw, db (views of the flat gradient) and, unless dx is None, dx (K, B, in)."""
    k, batch, fan_in = x.shape
    fan_out = y.shape[2]
    assert dw.stride(0) == w.stride(0) == db.stride(0)  # all views of (K, n) tensors of one n
    config = BACKWARD_CONFIG[precision]
    launch(_backward_kernel, (k, triton.cdiv(fan_in, config["BLOCK_IN"])),
        g, y, x, w, layer.codes, dw, db, dx if dx is not None else x, batch, fan_in, fan_out, w.stride(0),
        BLOCK_B=_block_b(batch), WRITE_DX=dx is not None, PRECISION=precision, **config)
