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

from relulab.kernels.activation_code import activate, activate_by_select, activation_grad
from relulab.kernels.launches import launch


@triton.jit
def _forward_kernel(x_ptr, w_ptr, b_ptr, y_ptr, code_ptr, B, IN: tl.constexpr, OUT: tl.constexpr, row_stride,
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
def _backward_kernel(g_ptr, y_ptr, x_ptr, w_ptr, code_ptr, dw_ptr, db_ptr, dx_ptr, B, IN: tl.constexpr,
                     OUT: tl.constexpr, row_stride,
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
# layers (BENCHMARKS.md, Speed). Backward: software pipelining of its short loop cost 30-50% in fp32. The tf32
# forward's three stages (one before) are from an H200, in seed 001's step around the run kernels (BENCHMARKS.md,
# "Run kernels pipelined"): its first layer's loop over 784 inputs then loads ahead, a step of 20 models 1.5% less.
FORWARD_CONFIG = {"ieee": dict(BLOCK_OUT=32, BLOCK_IN=64, num_warps=4, num_stages=3),
                  "tf32": dict(BLOCK_OUT=16, BLOCK_IN=128, num_warps=4, num_stages=3)}
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


# Runs of square layers: seed 001's model is 784 -> 300 -> 100, then 48 layers of 100 -> 100, then 100 -> 10. Each
# per-layer kernel above costs about 5.6 us a step for 20 models, nearly all of it latency (launch, then a load that
# waits on the previous layer's store), so the 48 middle layers were 96 of the step's ~110 kernels. A run of
# WIDTH -> WIDTH layers (WIDTH <= 128) is instead three kernels: a forward that takes BLOCK_B rows of one model's
# batch through every layer with the activations in registers, a backward that takes the same rows back through
# every layer (saving each layer's delta), and one wide kernel for all the layers' weight and bias gradients at once,
# which need the whole batch. The layers' weights are consecutive in the flat parameters (weight, then bias, layer
# after layer: relulab.packing.stacking), so layer l's starts l * (WIDTH * WIDTH + WIDTH) after the first's.
# An earlier whole-run kernel on fp32 FMA products was 3.5x slower than the per-layer kernels (BENCHMARKS.md,
# "Tried, did not pay: whole runs of layers in one kernel"): one program must do a 128 x 128 product per layer,
# which only tensor cores (tf32) do fast enough.


@triton.jit
def _run_forward_kernel(act_ptr, p_ptr, code_ptr, K, B, WIDTH: tl.constexpr, LAYERS, row_stride,
                        BLOCK_B: tl.constexpr, BLOCK_W: tl.constexpr, PRECISION: tl.constexpr):
    """acts[l + 1] = act_{k,l}(acts[l] @ W_l.T + b_l) for l < LAYERS, one model k and BLOCK_B rows of its batch;
    acts is (LAYERS + 1, K, B, WIDTH), acts[0] the run's input."""
    k = tl.program_id(0)
    rb = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    rw = tl.arange(0, BLOCK_W)
    tile = (rb[:, None] < B) & (rw[None, :] < WIDTH)
    square = (rw[:, None] < WIDTH) & (rw[None, :] < WIDTH)
    offsets = rb[:, None] * WIDTH + rw[None, :]
    layer_size = WIDTH * WIDTH + WIDTH
    slab = K * B * WIDTH  # one layer's activations
    p_ptr += k * row_stride
    # Columns past WIDTH hold act(0) (0.5 for sigmoid), but the weights' masked rows there are 0, so they add nothing.
    h = tl.load(act_ptr + k * B * WIDTH + offsets, mask=tile, other=0.0)
    for l in range(LAYERS):
        w_ptr = p_ptr + l * layer_size
        wt = tl.load(w_ptr + rw[None, :] * WIDTH + rw[:, None], mask=square, other=0.0)  # wt[i, o] = W_l[o, i]
        bias = tl.load(w_ptr + WIDTH * WIDTH + rw, mask=rw < WIDTH, other=0.0)
        z = tl.dot(h, wt, input_precision=PRECISION) + bias[None, :]
        h = activate_by_select(z, tl.load(code_ptr + k * LAYERS + l))
        tl.store(act_ptr + (l + 1) * slab + k * B * WIDTH + offsets, h, mask=tile)


@triton.jit
def _run_backward_kernel(g_ptr, act_ptr, p_ptr, code_ptr, delta_ptr, dx_ptr, K, B, WIDTH: tl.constexpr, LAYERS,
                         row_stride,
                         BLOCK_B: tl.constexpr, BLOCK_W: tl.constexpr, WRITE_DX: tl.constexpr,
                         PRECISION: tl.constexpr):
    """From g = dL/d(acts[LAYERS]), for one model k and BLOCK_B rows, layer by layer back: delta_l = g * act'(acts[l + 1])
    (stored, for the weight gradients), g = delta_l @ W_l; the last g is dL/d(acts[0]), written to dx."""
    k = tl.program_id(0)
    rb = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    rw = tl.arange(0, BLOCK_W)
    tile = (rb[:, None] < B) & (rw[None, :] < WIDTH)
    square = (rw[:, None] < WIDTH) & (rw[None, :] < WIDTH)
    offsets = k * B * WIDTH + rb[:, None] * WIDTH + rw[None, :]
    layer_size = WIDTH * WIDTH + WIDTH
    slab = K * B * WIDTH
    p_ptr += k * row_stride
    g = tl.load(g_ptr + offsets, mask=tile, other=0.0)
    for step in range(LAYERS):
        l = LAYERS - 1 - step
        y = tl.load(act_ptr + (l + 1) * slab + offsets, mask=tile, other=0.0)
        w = tl.load(p_ptr + l * layer_size + rw[:, None] * WIDTH + rw[None, :], mask=square, other=0.0)
        delta = g * activation_grad(y, tl.load(code_ptr + k * LAYERS + l))
        tl.store(delta_ptr + l * slab + offsets, delta, mask=tile)
        g = tl.dot(delta, w, input_precision=PRECISION)
    if WRITE_DX:
        tl.store(dx_ptr + offsets, g, mask=tile)


@triton.jit
def _run_weight_grad_kernel(act_ptr, delta_ptr, dp_ptr, K, B, WIDTH: tl.constexpr, LAYERS, row_stride,
                            BLOCK_B: tl.constexpr, BLOCK_OUT: tl.constexpr, BLOCK_W: tl.constexpr,
                            PRECISION: tl.constexpr):
    """dW_l[block] = delta_l[:, block].T @ acts[l] and db_l[block] = sum(delta_l[:, block]) for one model k, one
    layer l and one block of output rows, over the whole batch."""
    k = tl.program_id(0)
    l = tl.program_id(1)
    ro = tl.program_id(2) * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    rb = tl.arange(0, BLOCK_B)
    ri = tl.arange(0, BLOCK_W)
    slab = K * B * WIDTH
    rows = rb[:, None] < B
    delta = tl.load(delta_ptr + l * slab + k * B * WIDTH + rb[:, None] * WIDTH + ro[None, :],
                    mask=rows & (ro[None, :] < WIDTH), other=0.0)
    x = tl.load(act_ptr + l * slab + k * B * WIDTH + rb[:, None] * WIDTH + ri[None, :],
                mask=rows & (ri[None, :] < WIDTH), other=0.0)
    dw = tl.dot(tl.trans(delta), x, input_precision=PRECISION)
    dp_ptr += k * row_stride + l * (WIDTH * WIDTH + WIDTH)
    tl.store(dp_ptr + ro[:, None] * WIDTH + ri[None, :], dw, mask=(ro[:, None] < WIDTH) & (ri[None, :] < WIDTH))
    tl.store(dp_ptr + WIDTH * WIDTH + ro, tl.sum(delta, axis=0), mask=ro < WIDTH)


# Rows of a batch per program, warps and software-pipeline stages of the run kernels, the fastest of those measured
# on an H200 for seed 001's 20 models (BENCHMARKS.md, "Runs of square layers" and "Run kernels pipelined"): 16 rows
# (two programs a model at batch 32) on 8 warps. Three stages let Triton's pipeliner copy the next two layers' weights
# (and, going back, their outputs) into shared memory while this layer's product runs, where one stage waited on each
# layer's loads: a step of 20 models 0.413 -> 0.375 ms. 32 or 64 rows (64: Hopper's wgmma products), 4 warps, and
# loading the next layer's weights into registers instead were slower, some of them several times; 16 warps forward
# took 1.6% off a step in one call (not taken on one measurement), and 16 warps backward were slower. Three stages
# take 136 KB of shared memory forward and 160 KB backward; a GPU with less a block runs them on one
# (relulab.kernels.launches.launch).
RUN_FORWARD_CONFIG = dict(BLOCK_B=16, num_warps=8, num_stages=3)
RUN_BACKWARD_CONFIG = dict(BLOCK_B=16, num_warps=8, num_stages=3)
# The weight gradients: blocks of 32 output rows (3,840 programs for 20 models' 48 layers, against 1,920 of 64) fill the
# GPU better, a step of 20 models 3% less (BENCHMARKS.md, "Run kernels pipelined"; 16 and 128 rows were slower).
RUN_WEIGHT_GRAD_CONFIG = dict(BLOCK_OUT=32, num_warps=4, num_stages=1)


def run_forward(acts, w, codes, precision: str = "tf32") -> None:
    """acts (L + 1, K, B, width): from acts[0], every layer's output into acts[1:]; w: the run's first weight, a view
    of the stack's flat (K, n) parameters; codes (K, L) int32."""
    layers, k, batch, width = acts.shape[0] - 1, acts.shape[1], acts.shape[2], acts.shape[3]
    config = dict(RUN_FORWARD_CONFIG)
    block_b = config.pop("BLOCK_B")
    launch(_run_forward_kernel, (k, triton.cdiv(batch, block_b)), acts, w, codes, k, batch, width, layers,
           w.stride(0), BLOCK_B=block_b, BLOCK_W=_block_w(width), PRECISION=precision, **config)


def run_backward(g, acts, w, codes, deltas, dx, precision: str = "tf32") -> None:
    """From g (K, B, width), the gradient of acts[L]: every layer's delta into deltas (L, K, B, width) and, unless dx
    is None, the gradient of acts[0] into dx."""
    layers, k, batch, width = deltas.shape
    config = dict(RUN_BACKWARD_CONFIG)
    block_b = config.pop("BLOCK_B")
    launch(_run_backward_kernel, (k, triton.cdiv(batch, block_b)), g, acts, w, codes, deltas,
           dx if dx is not None else g, k, batch, width, layers, w.stride(0), BLOCK_B=block_b,
           BLOCK_W=_block_w(width), WRITE_DX=dx is not None, PRECISION=precision, **config)


def run_weight_grad(acts, deltas, dw, precision: str = "tf32") -> None:
    """Every layer's weight and bias gradients of a run, into the flat gradient from dw (the first layer's weight
    gradient, a view of the flat (K, n) gradient) on."""
    layers, k, batch, width = deltas.shape
    config = dict(RUN_WEIGHT_GRAD_CONFIG)
    launch(_run_weight_grad_kernel, (k, layers, triton.cdiv(width, config["BLOCK_OUT"])), acts, deltas, dw, k,
           batch, width, layers, dw.stride(0), BLOCK_B=_block_b(batch), BLOCK_W=_block_w(width), PRECISION=precision,
           **config)


def _block_w(width: int) -> int:
    return max(16, triton.next_power_of_2(width))
