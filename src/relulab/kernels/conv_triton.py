"""Triton implicit-GEMM kernels for seed-cnn's square 'valid' convolutions, a stack of K models per launch.

cuDNN picks 128-wide tiles for every layer, so seed-cnn's 48- and 96-channel layers leave a quarter to a
half of each tile's products unused, and one model's layers are too small to fill an H100. These kernels
run K models' convolutions in one launch (the grid's third axis is the model), with tile sizes measured
per layer (`CONFIGS`). Activations hold the models side by side in the channel axis, the layout in which
batch norm and pooling of all K models are single PyTorch kernels (`relulab.packing.stacked_cnn`):

    x  (N, H, W, K, CIN)     w  (K, COUT, KS, KS, CIN)     y  (N, H-KS+1, W-KS+1, K, COUT)

Each kernel is the convolution written as one matrix product whose rows are positions and whose
reduction runs over (tap, channel), the operand rows gathered from the image on the fly:
- forward:  y[pos, co]  = b[co] + sum over (tap, ci) of x[pos + tap, ci] * w[co, tap, ci]
- dgrad:    dx[pos, ci] = sum over (tap, co) of dy[pos - tap, co] * w[co, tap, ci]   (zero outside dy)
- wgrad:    dw[co, tap, ci] = sum over pos of dy[pos, co] * x[pos + tap, ci]         (split over pos)

Products are bf16 on tensor cores with fp32 sums, as cuDNN's bf16 kernels; the weight gradient stays fp32.
benchmarks/probe_conv_kernels.py measures them against cuDNN layer by layer; tests/helpers/conv_triton_check.py
runs them in Triton's CPU interpreter against PyTorch's convolution (tests/kernels/test_triton_interpreter.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from relulab.kernels.activation_code import activate, activation_grad_columns
from relulab.kernels.launches import launch


@triton.jit
def _wrap(index, size):
    """index % size, keeping loads along a channel axis vectorized.

    A clamp such as tl.where(index < size, index, 0) hides from Triton that the channel indices are
    consecutive, and every load along them became a scalar load (cuDNN's speed at a quarter). Channel
    counts here are multiples of 8, so after the wrap the indices still run in aligned groups of 8
    (16 bytes of bf16), which is what the hints say.
    """
    return tl.max_contiguous(tl.multiple_of(index % size, 8), 8)


@triton.jit
def _position(index, HEIGHT: tl.constexpr, WIDTH: tl.constexpr):
    """Rows of a product, numbered over (image, row, column) of HEIGHT x WIDTH images, as those three."""
    return index // (HEIGHT * WIDTH), (index // WIDTH) % HEIGHT, index % WIDTH


@triton.jit
def _slab_columns(BLOCK_N: tl.constexpr, SLABS: tl.constexpr):
    """The column indices of this program's three slabs (with SLABS=1 only the first is used)."""
    first = tl.program_id(1) * (BLOCK_N * SLABS) + tl.arange(0, BLOCK_N)
    return first, first + BLOCK_N, first + 2 * BLOCK_N


@triton.jit
def _fprop_epilogue(acc, rm, rn, M, model, b_ptr, y_ptr, code_ptr, sums_ptr, K, COUT: tl.constexpr,
                    ACT: tl.constexpr, STATS: tl.constexpr):
    """Bias, activation and store of one slab of output columns rn; with STATS, its per-channel sums."""
    acc += tl.load(b_ptr + _wrap(rn, COUT)).to(tl.float32)[None, :]
    if ACT:
        acc = activate(acc, tl.load(code_ptr + model))
    out = acc.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + rm[:, None] * (K * COUT) + rn[None, :], out, mask=(rm < M)[:, None] & (rn < COUT)[None, :])
    if STATS:
        # Of the values as stored, which are what the next layer reads; rows past the end count nothing.
        kept = tl.where((rm < M)[:, None], out.to(tl.float32), 0.0)
        at = (tl.program_id(0) * K + model) * COUT + rn
        tl.store(sums_ptr + at, tl.sum(kept, 0), mask=rn < COUT)
        tl.store(sums_ptr + tl.num_programs(0) * K * COUT + at, tl.sum(kept * kept, 0), mask=rn < COUT)


@triton.jit(do_not_specialize=["NB", "K"])
def _fprop_kernel(x_ptr, w_ptr, b_ptr, y_ptr, code_ptr, sums_ptr,
                  NB, H: tl.constexpr, W: tl.constexpr, K, CIN: tl.constexpr,
                  COUT: tl.constexpr, KS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, SLABS: tl.constexpr, STAGES: tl.constexpr, ACT: tl.constexpr,
                  STATS: tl.constexpr):
    """y = act(conv(x, w) + b) for one tile of one model; with STATS, the tile's per-channel sums of y and y*y
    go to sums (2, row tiles, K, COUT), so batch norm needs no pass of its own over y. Where BLOCK_K does not
    divide CIN (a first layer's 3 channels, read in place; or a block wider than a tap's 48 channels) each block
    column is its own (tap, channel), so a block may straddle taps.
    With SLABS=3 a tile's columns are three slabs of BLOCK_N that share each loaded block of x (see CONFIGS)."""
    HO: tl.constexpr = H - KS + 1
    WO: tl.constexpr = W - KS + 1
    M = NB * HO * WO
    KTOT: tl.constexpr = KS * KS * CIN
    model = tl.program_id(2)
    x_ptr += model * CIN
    w_ptr += model * (COUT * KTOT)
    b_ptr += model * COUT
    y_ptr += model * COUT

    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    img, h, w = _position(rm, HO, WO)
    # Rows past the end read row 0 instead of being masked: the loads stay unmasked and vectorized.
    row = tl.where(rm < M, ((img * H + h) * W + w) * (K * CIN), 0)
    rn0, rn1, rn2 = _slab_columns(BLOCK_N, SLABS)
    rk = tl.arange(0, BLOCK_K)

    acc0 = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in tl.range(0, KTOT, BLOCK_K, num_stages=STAGES):
        if CIN % BLOCK_K == 0:  # a block never straddles two taps: one shift for all its columns
            tap = k0 // CIN
            shift = ((tap // KS) * W + tap % KS) * (K * CIN) + (k0 - tap * CIN)
            a = tl.load(x_ptr + row[:, None] + (shift + rk)[None, :])
            w_at = w_ptr + (k0 + rk)[:, None]
            b0 = tl.load(w_at + _wrap(rn0, COUT)[None, :] * KTOT)
            if SLABS == 3:
                b1 = tl.load(w_at + _wrap(rn1, COUT)[None, :] * KTOT)
                b2 = tl.load(w_at + _wrap(rn2, COUT)[None, :] * KTOT)
        else:  # blocks that straddle taps (3 channels, or 64 of 48): each column its own (tap, channel)
            col = k0 + rk
            tap = col // CIN
            shift = ((tap // KS) * W + tap % KS) * (K * CIN) + col % CIN
            a = tl.load(x_ptr + row[:, None] + shift[None, :], mask=(col < KTOT)[None, :], other=0.0)
            w_at = w_ptr + col[:, None]
            b0 = tl.load(w_at + _wrap(rn0, COUT)[None, :] * KTOT, mask=(col < KTOT)[:, None], other=0.0)
            if SLABS == 3:
                b1 = tl.load(w_at + _wrap(rn1, COUT)[None, :] * KTOT, mask=(col < KTOT)[:, None], other=0.0)
                b2 = tl.load(w_at + _wrap(rn2, COUT)[None, :] * KTOT, mask=(col < KTOT)[:, None], other=0.0)
        acc0 = tl.dot(a, b0, acc0)
        if SLABS == 3:
            acc1 = tl.dot(a, b1, acc1)
            acc2 = tl.dot(a, b2, acc2)
    _fprop_epilogue(acc0, rm, rn0, M, model, b_ptr, y_ptr, code_ptr, sums_ptr, K, COUT, ACT, STATS)
    if SLABS == 3:
        _fprop_epilogue(acc1, rm, rn1, M, model, b_ptr, y_ptr, code_ptr, sums_ptr, K, COUT, ACT, STATS)
        _fprop_epilogue(acc2, rm, rn2, M, model, b_ptr, y_ptr, code_ptr, sums_ptr, K, COUT, ACT, STATS)


@triton.jit
def _dgrad_store(acc, rm, rn, M, dx_ptr, K, CIN: tl.constexpr):
    tl.store(dx_ptr + rm[:, None] * (K * CIN) + rn[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=(rm < M)[:, None] & (rn < CIN)[None, :])


@triton.jit(do_not_specialize=["NB", "K"])
def _dgrad_kernel(dy_ptr, w_ptr, dx_ptr,
                  NB, H: tl.constexpr, W: tl.constexpr, K, CIN: tl.constexpr,
                  COUT: tl.constexpr, KS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, SLABS: tl.constexpr, STAGES: tl.constexpr):
    HO: tl.constexpr = H - KS + 1
    WO: tl.constexpr = W - KS + 1
    M = NB * H * W
    KTOT: tl.constexpr = KS * KS * CIN
    model = tl.program_id(2)
    dy_ptr += model * COUT
    w_ptr += model * (COUT * KTOT)
    dx_ptr += model * CIN

    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    img, h, w = _position(rm, H, W)
    rn0, rn1, rn2 = _slab_columns(BLOCK_N, SLABS)
    rk = tl.arange(0, BLOCK_K)

    acc0 = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in tl.range(0, KS * KS * COUT, BLOCK_K, num_stages=STAGES):
        tap = k0 // COUT  # BLOCK_K divides COUT
        ho = h - tap // KS
        wo = w - tap % KS
        inside = (rm < M) & (ho >= 0) & (ho < HO) & (wo >= 0) & (wo < WO)
        row = tl.where(inside, ((img * HO + ho) * WO + wo) * (K * COUT), 0)
        a = tl.load(dy_ptr + row[:, None] + (k0 - tap * COUT + rk)[None, :], mask=inside[:, None], other=0.0)
        w_at = w_ptr + (k0 - tap * COUT + rk)[:, None] * KTOT + tap * CIN
        acc0 = tl.dot(a, tl.load(w_at + _wrap(rn0, CIN)[None, :]), acc0)
        if SLABS == 3:
            acc1 = tl.dot(a, tl.load(w_at + _wrap(rn1, CIN)[None, :]), acc1)
            acc2 = tl.dot(a, tl.load(w_at + _wrap(rn2, CIN)[None, :]), acc2)
    _dgrad_store(acc0, rm, rn0, M, dx_ptr, K, CIN)
    if SLABS == 3:
        _dgrad_store(acc1, rm, rn1, M, dx_ptr, K, CIN)
        _dgrad_store(acc2, rm, rn2, M, dx_ptr, K, CIN)


@triton.jit(do_not_specialize=["M"])
def _act_backward_kernel(da_ptr, a_ptr, dsums_ptr, code_ptr, dpre_ptr, part_ptr, M, KC, C: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """The gradient before the activation, for one tile of rows (positions) and of the stack's K*C channels:
    dpre = (da + dsum + 2 a dsumsq) * act'(a), from the gradients of a = act(pre) and of the batch-norm sums
    of a and a*a that the forward kernel took; and the tile's column sums of dpre (the bias gradient).
    The tile runs across models (column j is model j // C's channel j % C), so its loads are whole
    contiguous runs of a row, however few channels a model has."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    inside = (rows < M)[:, None] & (cols < KC)[None, :]
    at = rows[:, None] * KC + cols[None, :]
    da = tl.load(da_ptr + at, mask=inside, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + at, mask=inside, other=0.0).to(tl.float32)
    dsum = tl.load(dsums_ptr + cols, mask=cols < KC, other=0.0)
    dsumsq = tl.load(dsums_ptr + KC + cols, mask=cols < KC, other=0.0)
    code = tl.load(code_ptr + cols // C, mask=cols < KC, other=0)
    dpre = (da + dsum[None, :] + 2.0 * a * dsumsq[None, :]) * activation_grad_columns(a, code[None, :])
    dpre = tl.where(inside, dpre, 0.0)
    tl.store(dpre_ptr + at, dpre.to(dpre_ptr.dtype.element_ty), mask=inside)
    tl.store(part_ptr + tl.program_id(0) * KC + cols, tl.sum(dpre, 0), mask=cols < KC)


@triton.jit
def _wgrad_store(acc, rows, rco, part_ptr, KTOT: tl.constexpr, COUT: tl.constexpr):
    tl.store(part_ptr + rco[None, :] * KTOT + rows[:, None], acc, mask=(rows < KTOT)[:, None] & (rco < COUT)[None, :])


@triton.jit(do_not_specialize=["NB", "K", "SPLIT"])
def _wgrad_kernel(x_ptr, dy_ptr, part_ptr,
                  NB, H: tl.constexpr, W: tl.constexpr, K, CIN: tl.constexpr,
                  COUT: tl.constexpr, KS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, SLABS: tl.constexpr, SPLIT, STAGES: tl.constexpr):
    """One tile of one model's weight gradient, over 1/SPLIT of the positions: rows are the flattened
    (tap, CIN) of the weight (blocks may straddle taps, so 864 rows waste 4% of 128-row tiles where a tap's
    96 channels alone would waste 25%), columns SLABS slabs of BLOCK_N output channels."""
    HO: tl.constexpr = H - KS + 1
    WO: tl.constexpr = W - KS + 1
    M = NB * HO * WO
    KTOT: tl.constexpr = KS * KS * CIN
    CHUNK = ((M + SPLIT * BLOCK_K - 1) // (SPLIT * BLOCK_K)) * BLOCK_K
    model = tl.program_id(2) // SPLIT
    part = tl.program_id(2) % SPLIT
    x_ptr += model * CIN
    dy_ptr += model * COUT
    part_ptr += tl.program_id(2).to(tl.int64) * (COUT * KTOT)
    start = part * CHUNK

    rco0, rco1, rco2 = _slab_columns(BLOCK_N, SLABS)

    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    tap = (rows % KTOT) // CIN
    # Each row's offset in x from a position's: its tap's shift and its channel, in aligned runs of 8
    # (but for a narrow input, whose channels are fewer).
    row_shift = ((tap // KS) * W + tap % KS) * (K * CIN) + rows % CIN
    if CIN % 8 == 0:
        row_shift = tl.max_contiguous(tl.multiple_of(row_shift, 8), 8)

    acc0 = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in tl.range(start, start + CHUNK, BLOCK_K, num_stages=STAGES):
        rp = k0 + tl.arange(0, BLOCK_K)
        inside = rp < M
        img, ho, wo = _position(rp, HO, WO)
        xrow = ((img * H + ho) * W + wo) * (K * CIN)
        a = tl.load(x_ptr + xrow[None, :] + row_shift[:, None], mask=inside[None, :], other=0.0)
        dy_at = dy_ptr + rp[:, None] * (K * COUT)
        acc0 = tl.dot(a, tl.load(dy_at + _wrap(rco0, COUT)[None, :], mask=inside[:, None], other=0.0), acc0)
        if SLABS == 3:
            acc1 = tl.dot(a, tl.load(dy_at + _wrap(rco1, COUT)[None, :], mask=inside[:, None], other=0.0), acc1)
            acc2 = tl.dot(a, tl.load(dy_at + _wrap(rco2, COUT)[None, :], mask=inside[:, None], other=0.0), acc2)
    _wgrad_store(acc0, rows, rco0, part_ptr, KTOT, COUT)
    if SLABS == 3:
        _wgrad_store(acc1, rows, rco1, part_ptr, KTOT, COUT)
        _wgrad_store(acc2, rows, rco2, part_ptr, KTOT, COUT)


# Tile sizes per layer, (input size, CIN, COUT, kernel size) -> kernel -> configuration: the fastest of a small grid
# for a stack of 16 (benchmarks/probe_conv_kernels.py; BENCHMARKS.md), searched on an H100, then again on an H200
# around those tiles and, for the 48-channel inputs, over a grid (2026-12-03), the forward's with the activation and
# batch-norm sums in its epilogue, as stacks run it. Three slabs (slab_width) won nearly everywhere; the 48-channel
# inputs' forwards are fastest with reduction blocks wider than a tap's 48 channels (32 or 64, straddling taps:
# c2's 32.1 -> 24.1 us a model, c3's 39.0 -> 31.6). SPLIT is for 16 models and scales with 16 / K, so the weight
# gradient's grid stays near the same size.
def _cfg(bm, bn, bk, warps, split=None, slabs=1, stages=3):
    cfg = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SLABS=slabs, STAGES=stages, num_warps=warps)
    return cfg if split is None else {**cfg, "SPLIT": split}


_C96_WGRAD = _cfg(128, 32, 64, 4, 4, slabs=3)
CONFIGS = {
    # the first layer, its 3 input channels as they are: one block of 32 columns covers its 27 (tap, channel)
    (32, 3, 48, 3): {"fwd": _cfg(256, 16, 32, 4, slabs=3), "wgrad": _cfg(32, 16, 128, 4, 16, slabs=3)},
    (30, 48, 48, 3): {"fwd": _cfg(128, 64, 64, 4), "dgrad": _cfg(256, 64, 16, 8),
                      "wgrad": _cfg(128, 16, 64, 4, 16, slabs=3, stages=4)},
    (28, 48, 96, 3): {"fwd": _cfg(128, 32, 32, 4, slabs=3), "dgrad": _cfg(256, 64, 32, 8),
                      "wgrad": _cfg(128, 32, 64, 4, 8, slabs=3)},
    (26, 96, 96, 3): {"fwd": _cfg(256, 32, 32, 4, slabs=3), "dgrad": _cfg(256, 32, 32, 4, slabs=3),
                      "wgrad": _C96_WGRAD},
    (24, 96, 96, 3): {"fwd": _cfg(256, 32, 32, 4, slabs=3), "dgrad": _cfg(256, 32, 32, 4, slabs=3),
                      "wgrad": _C96_WGRAD},
    (22, 96, 96, 3): {"fwd": _cfg(256, 32, 32, 4, slabs=3), "dgrad": _cfg(128, 32, 32, 4, slabs=3),
                      "wgrad": _C96_WGRAD},
    (10, 96, 192, 3): {"fwd": _cfg(128, 64, 32, 4, slabs=3), "dgrad": _cfg(128, 128, 64, 8),
                       "wgrad": _cfg(64, 64, 32, 4, 2, slabs=3)},
    (8, 192, 192, 3): {"fwd": _cfg(64, 64, 64, 4, slabs=3, stages=2), "dgrad": _cfg(256, 64, 64, 8, slabs=3),
                       "wgrad": _cfg(64, 64, 64, 4, 1, slabs=3)},
}


def supports(cin: int, cout: int, ks: int = 3, input_grad: bool = True) -> bool:
    """Whether these kernels take a layer: the reduction blocks (at least 16 wide) must divide the channels,
    but for a narrow input without an input gradient (a first layer), whose ks*ks*cin fit one block of 64."""
    narrow = not input_grad and ks * ks * cin <= 64
    return (cin % 16 == 0 or narrow) and cout % 16 == 0


def _largest_block(channels: int) -> int:
    return max(b for b in (16, 32, 64) if channels % b == 0)


def slab_width(channels: int):
    """The width of three slabs that cover `channels` exactly (seed-cnn's 48, 96, 192: 3 x 16, 32, 64), or None.

    Tiles are powers of two wide, so a 96-channel layer in one 128-wide tile computes a quarter of it for
    nothing; three 32-wide slabs that share the other operand's loads compute none."""
    width = channels // 3
    return width if channels % 3 == 0 and width in (16, 32, 64) else None


def config(kernel: str, size: int, cin: int, cout: int, models: int, positions: int, ks: int = 3) -> dict:
    """The tile sizes for one kernel of one layer: measured ones, or a middle-of-the-road default."""
    cfg = CONFIGS.get((size, cin, cout, ks), {}).get(kernel)
    if cfg is None:
        columns = cin if kernel == "dgrad" else cout
        slab = slab_width(columns)
        bn, slabs = (slab, 3) if slab else (64, 1)
        if kernel == "wgrad":  # rows: the weight's (tap, CIN), which a narrow first layer has few of
            cfg = _cfg(min(128, max(16, triton.next_power_of_2(ks * ks * cin))), bn, 64, 4, 16, slabs)
        else:
            reduced = cin if kernel == "fwd" else cout
            block = _largest_block(reduced) if reduced % 16 == 0 else max(16, triton.next_power_of_2(ks * ks * cin))
            cfg = _cfg(128, bn, block, 4, slabs=slabs)
    if kernel == "wgrad":  # keep each split's share of positions at least 4 blocks long
        split = max(1, min(round(cfg["SPLIT"] * 16 / models), positions // (4 * cfg["BLOCK_K"])))
        cfg = {**cfg, "SPLIT": split}
    return cfg


# The kernels index their tensors with 32-bit offsets (cheaper address arithmetic in every loop), so no
# tensor they touch may hold 2**31 values or more: past that an offset wraps and a kernel reads or writes
# out of bounds. Callers keep below it (StackedCNN.largest_batch); this check stops those that do not.
MAX_VALUES = 2**31 - 1


def check_indexable(*tensors: torch.Tensor) -> None:
    """Raise ValueError if any of the tensors is too large for the kernels' 32-bit offsets."""
    for t in tensors:
        if t.numel() > MAX_VALUES:
            raise ValueError(f"a tensor of shape {tuple(t.shape)} has {t.numel()} values, more than the Triton "
                             f"convolutions' 32-bit offsets reach ({MAX_VALUES}): use a smaller batch or stack")


def _column_tiles(columns: int, cfg: dict) -> int:
    return triton.cdiv(columns, cfg["BLOCK_N"] * cfg["SLABS"])


def _with_slabs(cfg: dict) -> dict:
    return {"SLABS": 1, **cfg}  # tile sizes written before slabs (tests, probes) mean one slab


def forward_row_tiles(x_shape, cout: int, ks: int, cfg=None) -> int:
    """How many row tiles the forward of an x of x_shape (N,H,W,K,CIN) runs: the partial sums' second size."""
    NB, H, W, K, CIN = x_shape
    positions = NB * (H - ks + 1) * (W - ks + 1)
    return triton.cdiv(positions, (cfg or config("fwd", H, CIN, cout, K, positions, ks))["BLOCK_M"])


def _forward(x, w, b, codes, stats: bool, cfg):
    NB, H, W, K, CIN = x.shape
    COUT, KS = w.shape[1], w.shape[2]
    HO, WO = H - KS + 1, W - KS + 1
    cfg = _with_slabs(cfg or config("fwd", H, CIN, COUT, K, NB * HO * WO, KS))
    y = x.new_empty(NB, HO, WO, K, COUT)
    check_indexable(x, y)
    grid = (triton.cdiv(NB * HO * WO, cfg["BLOCK_M"]), _column_tiles(COUT, cfg), K)
    # Without codes or stats the kernel never reads those pointers (ACT, STATS are off); b stands in for them.
    sums = torch.empty(2, grid[0], K, COUT, device=x.device, dtype=torch.float32) if stats else b
    launch(_fprop_kernel, grid, x, w, b, y, b if codes is None else codes, sums, NB, H, W, K, CIN, COUT, KS, **cfg,
                        ACT=codes is not None, STATS=stats)
    return y, sums if stats else None


def conv_forward(x, w, b, cfg=None, codes=None):
    """y = conv(x, w) + b for each model. x (N,H,W,K,CIN) and w (K,COUT,KS,KS,CIN) bf16, b (K,COUT) fp32;
    with codes ((K,) int32, `relulab.zoo.activations.KERNEL_CODES`), each model's activation of that."""
    return _forward(x, w, b, codes, False, cfg)[0]


def conv_forward_with_partial_sums(x, w, b, codes, cfg=None):
    """conv_forward with activation codes, and each row tile's per-channel sums of y and y*y,
    (2, forward_row_tiles, K, COUT) in fp32. The caller adds them up: in a compiled stack, with the batch
    norm's other small operations in one kernel, rather than a reduction of its own here."""
    return _forward(x, w, b, codes, True, cfg)


def conv_forward_with_sums(x, w, b, codes, cfg=None):
    """conv_forward with activation codes, and the per-channel sums of y and y*y, (2, K, COUT) in fp32."""
    y, partial_sums = conv_forward_with_partial_sums(x, w, b, codes, cfg)
    return y, partial_sums.sum(1)


ACT_BACKWARD_BLOCKS = (64, 128)  # (rows, channels) of activation_backward's tiles


def act_backward_row_tiles(a_shape, block_m: int = ACT_BACKWARD_BLOCKS[0]) -> int:
    """How many row tiles activation_backward runs over an a of a_shape: its partial sums' first size."""
    return triton.cdiv(a_shape[0] * a_shape[1] * a_shape[2], block_m)


def activation_backward_partial(da, a, dsums, codes, block_m: int = ACT_BACKWARD_BLOCKS[0],
                                block_c: int = ACT_BACKWARD_BLOCKS[1]):
    """From the gradients of a = act(pre) (N,H,W,K,C) and of its sums (2, K, C) from conv_forward_with_sums:
    the gradient of pre (like a) and each row tile's sums of it, (act_backward_row_tiles, K, C) in fp32,
    which add up to the bias's gradient."""
    K, C = a.shape[-2:]
    M = a.numel() // (K * C)
    grid = (triton.cdiv(M, block_m), triton.cdiv(K * C, block_c))
    check_indexable(a)
    dpre = torch.empty_like(a)
    part = torch.empty(grid[0], K, C, device=a.device, dtype=torch.float32)
    launch(_act_backward_kernel, grid, da, a, dsums, codes, dpre, part, M, K * C, C, BLOCK_M=block_m, BLOCK_C=block_c)
    return dpre, part


def activation_backward(da, a, dsums, codes, block_m: int = ACT_BACKWARD_BLOCKS[0],
                        block_c: int = ACT_BACKWARD_BLOCKS[1]):
    """activation_backward_partial with the bias gradient summed: (dpre, (K, C) in fp32)."""
    dpre, part = activation_backward_partial(da, a, dsums, codes, block_m, block_c)
    return dpre, part.sum(0)


def conv_dgrad(dy, w, H, W, cfg=None):
    """The input gradient dx (N,H,W,K,CIN) from dy (N,HO,WO,K,COUT)."""
    NB, HO, WO, K, COUT = dy.shape
    KS, CIN = w.shape[2], w.shape[4]
    cfg = _with_slabs(cfg or config("dgrad", H, CIN, COUT, K, NB * HO * WO, KS))
    dx = dy.new_empty(NB, H, W, K, CIN)
    check_indexable(dy, dx)
    grid = (triton.cdiv(NB * H * W, cfg["BLOCK_M"]), _column_tiles(CIN, cfg), K)
    launch(_dgrad_kernel, grid, dy, w, dx, NB, H, W, K, CIN, COUT, KS, **cfg)
    return dx


def wgrad_split(x_shape, cout: int, ks: int, cfg=None) -> int:
    """Into how many parts the weight gradient of an x of x_shape splits the positions: the parts' second size."""
    NB, H, W, K, CIN = x_shape
    return (cfg or config("wgrad", H, CIN, cout, K, NB * (H - ks + 1) * (W - ks + 1), ks))["SPLIT"]


def conv_wgrad_partial(x, dy, KS, cfg=None):
    """The weight gradient as SPLIT partial products over the positions, (K, SPLIT, COUT, KS, KS, CIN) in
    fp32: the caller adds them up (in a compiled stack, in the kernel that also reorders the gradient)."""
    NB, H, W, K, CIN = x.shape
    HO, WO, COUT = dy.shape[1], dy.shape[2], dy.shape[4]
    cfg = _with_slabs(cfg or config("wgrad", H, CIN, COUT, K, NB * HO * WO, KS))
    split = cfg["SPLIT"]
    part = torch.empty(K * split, COUT, KS, KS, CIN, device=x.device, dtype=torch.float32)
    check_indexable(x, dy)
    grid = (triton.cdiv(KS * KS * CIN, cfg["BLOCK_M"]), _column_tiles(COUT, cfg), K * split)
    launch(_wgrad_kernel, grid, x, dy, part, NB, H, W, K, CIN, COUT, KS, **cfg)
    return part.view(K, split, COUT, KS, KS, CIN)


def conv_wgrad(x, dy, KS, cfg=None):
    """The weight gradient dw (K,COUT,KS,KS,CIN) in fp32, the sum of SPLIT partial products."""
    return conv_wgrad_partial(x, dy, KS, cfg).sum(1)
