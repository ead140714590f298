"""Probe: relulab's Triton convolutions (`relulab.conv_triton`) against cuDNN, layer by layer, on seed-cnn's shapes.

For each 3x3 layer of seed-cnn at batch 128, and a pack of P models: cuDNN's forward, input gradient
and weight gradient run model after model (one CUDA graph, bf16 channels-last, as the packed step
runs them); the Triton kernels run the P models in one launch each, with the tile sizes searched over
a small grid. Prints the best configuration per layer and kernel, the error against cuDNN, and the
per-model time of both. Run from the repository root on the GPU machine:

    OUT=out python benchmarks/probe_conv_kernels.py [--packs 8,1] [--budget 500] [--chosen]

Writes conv_kernels.jsonl under $OUT, one line per (layer, kernel, pack) as it is measured.
"""
import argparse
import itertools
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, "src")
from relulab.kernels import conv_triton as ct  # noqa: E402
from relulab.kernels import launches  # noqa: E402

T0 = time.perf_counter()
OUT = os.environ.get("OUT", ".")
NB = 128
# (name, input size, CIN, COUT, kernel size) of seed-cnn's layers as the stack runs them: slot 1 takes its 3
# input channels as they are (c1pad: padded with zeros to 16, as the stack did before).
LAYERS = [("c1", 32, 3, 48, 3), ("c2", 30, 48, 48, 3), ("c3", 28, 48, 96, 3), ("c4", 26, 96, 96, 3),
          ("c5", 24, 96, 96, 3), ("c6", 22, 96, 96, 3), ("c7", 10, 96, 192, 3), ("c8", 8, 192, 192, 3),
          ("c1pad", 32, 16, 48, 3)]
ROWS = [(64, 4), (128, 4), (128, 8), (256, 8)]  # (BLOCK_M, num_warps)
FEW_ROWS = [(16, 4), (32, 4), (32, 2)]  # the weight gradient's of a narrow first layer, whose weight has 27 rows
STAGES = [3]
GRID = "slabs"
KERNELS = ["fwd", "dgrad", "wgrad"]
CHOSEN_ONLY = False
AROUND = False
EVERY = False


def emit(rec):
    rec["t"] = round(time.perf_counter() - T0, 1)
    print(json.dumps(rec), flush=True)
    with open(f"{OUT}/conv_kernels.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


def graph_time(fn, reps=20):
    """Seconds per call of fn, replayed from a CUDA graph so launch overhead does not count."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def largest_block(channels, cap=64):
    return max(b for b in (16, 32, 64) if channels % b == 0 and b <= cap)


def rel_err(got, want):
    return float((got.float() - want.float()).abs().max() / want.float().abs().max())


def cudnn_ops(x, w, b, dy):
    """Per-model cuDNN calls, each model's tensors contiguous channels-last (as a model of its own has them)."""
    models = x.shape[3]
    xs = [x[:, :, :, k].contiguous().permute(0, 3, 1, 2) for k in range(models)]
    ws = [t.permute(0, 3, 1, 2) for t in w]
    dys = [dy[:, :, :, k].contiguous().permute(0, 3, 1, 2) for k in range(models)]
    bwd = torch.ops.aten.convolution_backward

    def fwd():
        return [F.conv2d(a, k, c) for a, k, c in zip(xs, ws, b)]

    def fwd_stats():  # what relulab's forward does in a stack: convolution, bias, ReLU, batch-norm statistics
        outs = [F.conv2d(a, k, c).relu() for a, k, c in zip(xs, ws, b)]
        for out in outs:
            torch.var_mean(out, (0, 2, 3))
        return outs

    def dgrad():
        return [bwd(g, a, k, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, False, False])[0]
                for g, a, k in zip(dys, xs, ws)]

    def wgrad():
        return [bwd(g, a, k, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, False])[1]
                for g, a, k in zip(dys, xs, ws)]
    return {"fwd": fwd, "fwd_stats": fwd_stats, "dgrad": dgrad, "wgrad": wgrad}


def wgrad_splits(rows, columns, bm, bn, P, positions):
    """Splits of the positions that give the weight gradient's grid 2-8 waves of an H100's 132 SMs."""
    tiles = triton.cdiv(rows, bm) * triton.cdiv(columns, bn) * P
    return [split for split in (1, 2, 4, 8, 16, 32, 64)
            if 264 <= tiles * split <= 1056 and positions // split >= 256]


def configs(kernel, P, H, CIN, COUT, KS):
    """The tiles relulab uses for this layer first (the baseline), then, unless --chosen, the search grid:
    three-slab tiles (conv_triton.slab_width) where the channels allow them, or (--grid all) one-slab tiles too."""
    ho = H - KS + 1
    chosen = ct.config(kernel.replace("fwd_stats", "fwd"), H, CIN, COUT, P, NB * ho * ho, KS)
    yield chosen
    if CHOSEN_ONLY:
        return
    if AROUND:
        yield from around(kernel, chosen, CIN, COUT)
        return
    columns = CIN if kernel == "dgrad" else COUT
    slab = ct.slab_width(columns)
    widths = [(bn, 1) for bn in (32, 64, 128) if bn <= 2 * columns] if GRID == "all" else []
    widths += [(w, 3) for w in ((slab, slab // 2) if slab else ()) if w >= 16]
    rows = ROWS + FEW_ROWS if kernel == "wgrad" and KS * KS * CIN <= 64 else ROWS
    for (bm, warps), (bn, slabs), stages in itertools.product(rows, widths, STAGES):
        if kernel == "wgrad":  # BLOCK_M over the weight's (tap, CIN) rows, columns over COUT, BLOCK_K positions
            for split in wgrad_splits(KS * KS * CIN, COUT, bm, bn * slabs, P, NB * ho * ho):
                cfg = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=64, SLABS=slabs, SPLIT=split, STAGES=stages,
                           num_warps=warps)
                if cfg != chosen:
                    yield cfg
        else:
            reduced = CIN if kernel.startswith("fwd") else COUT
            # A forward's blocks may straddle taps (its narrow-input path takes any block); a dgrad's divide COUT.
            blocks = {largest_block(reduced), 16} if reduced % 16 == 0 else {16, 32, 64}
            blocks |= {32, 64} if kernel.startswith("fwd") else set()
            for bk in sorted(blocks):
                cfg = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SLABS=slabs, STAGES=stages, num_warps=warps)
                if cfg != chosen:
                    yield cfg


def around(kernel, chosen, CIN, COUT):
    """The chosen tiles with one setting changed at a time (--around): pipeline stages 1-4 (at 1 the loads are
    plain ones, which Hopper's L1 caches, where cp.async.cg of the pipelined loads reads L2 only), the reduction
    block (a forward's may straddle taps: its narrow-input path takes any block), warps, and rows."""
    reduced = CIN if kernel.startswith("fwd") else COUT
    blocks = (16, 32, 64) if kernel.startswith("fwd") else [b for b in (16, 32, 64) if reduced % b == 0]
    if kernel == "wgrad":
        blocks = (32, 64, 128)  # positions per step
    variants = [{"STAGES": s} for s in (1, 2, 3, 4)] + [{"BLOCK_K": b} for b in blocks]
    variants += [{"num_warps": w} for w in (4, 8)] + [{"BLOCK_M": m} for m in (64, 128, 256)]
    seen = [chosen]
    for change in variants:
        cfg = {**chosen, **change}
        if cfg not in seen:
            seen.append(cfg)
            yield cfg


def precompile(calls):
    """Compile the kernels of all the tiles about to be timed on a thread pool (relulab.kernels.launches), rather than
    one after another at each first launch; a tile that fails to compile is left to fail (and be skipped) when timed."""
    with launches.recording() as noted:
        for call in calls:
            call()
    try:
        launches.compile_all(noted)
    except Exception:  # noqa: BLE001 - one tile that does not fit; the timing loop reports it
        pass


def triton_call(kernel, x, w, b, dy, H, KS, cfg):
    if kernel == "fwd":
        return lambda: ct.conv_forward(x, w, b, cfg)
    if kernel == "fwd_stats":
        codes = torch.ones(x.shape[3], dtype=torch.int32, device=x.device)  # ReLU
        return lambda: ct.conv_forward_with_sums(x, w, b, codes, cfg)[0]
    if kernel == "dgrad":
        return lambda: ct.conv_dgrad(dy, w, H, H, cfg)
    return lambda: ct.conv_wgrad(x, dy, KS, cfg)


def probe_layer(name, H, CIN, COUT, KS, P, deadline):
    dev = torch.device("cuda")
    ho = H - KS + 1
    # The kernels' layout: the P models side by side in the channel axis.
    x = torch.randn(NB, H, H, P, CIN, device=dev).relu().bfloat16()
    w = (torch.randn(P, COUT, KS, KS, CIN, device=dev) / (KS * KS * CIN) ** 0.5).bfloat16()
    b = torch.randn(P, COUT, device=dev) * 0.1
    dy = torch.randn(NB, ho, ho, P, COUT, device=dev).bfloat16()
    reference = cudnn_ops(x, w, b.bfloat16(), dy)
    flop = 2 * NB * ho ** 2 * COUT * KS * KS * CIN
    for kernel in KERNELS:
        want = reference[kernel]()
        cudnn_s = graph_time(reference[kernel]) / P
        best, baseline = None, None
        tiles = list(configs(kernel, P, H, CIN, COUT, KS))
        precompile([triton_call(kernel, x, w, b, dy, H, KS, cfg) for cfg in tiles])
        for cfg in tiles:
            if time.perf_counter() > deadline:
                break
            fn = triton_call(kernel, x, w, b, dy, H, KS, cfg)
            try:
                got = fn()
                per_model = [got[k] if kernel == "wgrad" else got[:, :, :, k] for k in range(P)]
                err = max(rel_err(g.permute(0, 3, 1, 2), want[k]) for k, g in enumerate(per_model))
                secs = graph_time(fn) / P
            except Exception as exc:  # a tile that does not fit shared memory: skip it, say so
                emit({"layer": name, "kernel": kernel, "pack": P, "cfg": cfg, "error": str(exc)[:120]})
                continue
            if not err <= 2e-2:  # NaN too
                emit({"layer": name, "kernel": kernel, "pack": P, "cfg": cfg, "wrong": err})
                continue
            baseline = secs if baseline is None else baseline  # the first: the tiles relulab has now
            if EVERY:
                emit({"layer": name, "kernel": kernel, "pack": P, "cfg": cfg, "us": round(secs * 1e6, 2)})
            if best is None or secs < best[0]:
                best = (secs, cfg, err)
        if best is None:
            continue
        emit({"layer": name, "kernel": kernel, "pack": P, "cudnn_us": round(cudnn_s * 1e6, 1),
              "triton_us": round(best[0] * 1e6, 1), "speedup": round(cudnn_s / best[0], 2),
              "triton_tflops": round(flop / best[0] / 1e12, 1), "cudnn_tflops": round(flop / cudnn_s / 1e12, 1),
              "err": best[2], "cfg": best[1], "current_us": round(baseline * 1e6, 1)})


def probe_act_backward(name, size, C, P):
    """conv_triton.activation_backward (reads the gradient and the activation, writes the gradient before it,
    and sums it per channel) over a layer's output, for a few row-block sizes: microseconds and GB/s."""
    dev = torch.device("cuda")
    a = torch.randn(NB, size, size, P, C, device=dev).relu().bfloat16()
    da = torch.randn_like(a)
    dsums = torch.randn(2, P, C, device=dev)
    codes = torch.ones(P, dtype=torch.int32, device=dev)
    for block_m, block_c in itertools.product((32, 64, 128), (64, 128, 256)):
        secs = graph_time(lambda: ct.activation_backward_partial(da, a, dsums, codes, block_m, block_c))
        emit({"layer": name, "kernel": "act_backward", "pack": P, "block_m": block_m, "block_c": block_c,
              "us": round(secs * 1e6, 1), "gb_s": round(3 * a.numel() * 2 / secs / 1e9)})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--packs", default="8,1")
    parser.add_argument("--budget", type=float, default=500)
    parser.add_argument("--stages", default="3")
    parser.add_argument("--chosen", action="store_true", help="time only the tiles relulab uses (CONFIGS)")
    parser.add_argument("--around", action="store_true",
                        help="the tiles relulab uses, then each with one setting changed (stages, block, warps, rows)")
    parser.add_argument("--every", action="store_true", help="write every tile's time, not only each kernel's best")
    parser.add_argument("--grid", default="slabs", choices=["slabs", "all"],
                        help="search three-slab tiles only, or one-slab tiles of 32-128 columns too")
    parser.add_argument("--layers", default="c2,c3,c4,c5,c6,c7,c8", help=f"of {','.join(n for n, *_ in LAYERS)}")
    parser.add_argument("--kernels", default="fwd,dgrad,wgrad", help="of fwd, fwd_stats (with ReLU and sums), dgrad, wgrad")
    parser.add_argument("--act-backward", action="store_true", help="also time conv_triton.activation_backward's tiles")
    args = parser.parse_args()
    deadline = T0 + args.budget
    STAGES[:] = [int(s) for s in args.stages.split(",")]
    global CHOSEN_ONLY, GRID, AROUND, EVERY
    CHOSEN_ONLY, GRID, AROUND, EVERY = args.chosen, args.grid, args.around, args.every
    KERNELS[:] = args.kernels.split(",")
    wanted = args.layers.split(",")
    for P in (int(p) for p in args.packs.split(",")):
        for name, H, CIN, COUT, KS in LAYERS:
            if name in wanted:
                probe_layer(name, H, CIN, COUT, KS, P, deadline)
    if args.act_backward:
        for P in (int(p) for p in args.packs.split(",")):
            for name, H, CIN, COUT, KS in LAYERS:
                if name in wanted:
                    probe_act_backward(name, H - KS + 1, COUT, P)
    rows = [json.loads(line) for line in open(f"{OUT}/conv_kernels.jsonl") if "speedup" in line]
    for P in sorted({r["pack"] for r in rows}):
        mine = [r for r in rows if r["pack"] == P]
        print(f"pack {P}: cuDNN {sum(r['cudnn_us'] for r in mine):.0f} us/model, "
              f"Triton {sum(r['triton_us'] for r in mine):.0f} us/model over {len(mine)} layer-kernels")


if __name__ == "__main__":
    main()
