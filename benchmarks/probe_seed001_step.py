"""Where seed 001's training step goes on the GPU, three ways (issue 25: the whole command at 60x the peer).

- `loop`: the 20-model pack `relulab run seed001` trains, built by the library (`ready_units`), one epoch through
  `Unit.step` as `train_together` runs it, against its full-batch graph replayed back to back, and a PyTorch
  profile of the loop's steps (kernel time against wall time).
- `multi`: S steps captured in one CUDA graph (the batch indices of all S copied in once), per step, and checked
  against S replays of the one-step graph.
- `kernels`: the run kernels of `relulab.kernels.fused_triton` on rows of parameters as they were (751,410 values
  a model, 8-byte aligned) and as the stack pads them now (751,424, 64-byte aligned).
- `stages`: the library's run kernels under other launch settings (rows, warps, Triton's pipeline stages), the
  forward and the backward each timed alone.
- `transposed`: variants of the run kernels that hold the activations transposed (width x rows), so that the
  product is W @ h.T with the weight as the left operand (Hopper's wgmma at M = 128), with Triton's software
  pipelining loading the next layers' weights ahead (`stages`). All were slower (BENCHMARKS.md).

    OUT=out python benchmarks/probe_seed001_step.py --fashion DATA/fashion-mnist --parts loop,multi,kernels,transposed

One JSON line a measurement, also to $OUT/probe_seed001_step.jsonl; profiles to $OUT/profile_*.txt.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import triton
import triton.language as tl

from relulab.kernels import fused_triton, launches
from relulab.kernels.activation_code import activate_by_select, activation_grad

OUT = Path(os.environ.get("OUT", "."))


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)
    with (OUT / "probe_seed001_step.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def cuda_ms(fn, repeats: int = 5) -> float:
    """Median over `repeats` of fn()'s GPU time in ms."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


# ---- the pack, as relulab run seed001 trains it ----

def seed001_unit(fashion: str):
    from relulab.data import load_data
    from relulab.experiments.plan import load_experiment
    from relulab.experiments.spec import Overrides
    from relulab.packing.pack import ready_units
    from relulab.training.loop import epoch_batches
    from relulab.training.specs import Job

    exp = load_experiment("seed001", Overrides(data_path=fashion))
    jobs = [Job(p.variant.spec, p.seed) for p in exp.planned()]
    device = torch.device("cuda")
    splits = load_data(jobs[0].spec.data).to(device)
    bounds = epoch_batches(len(splits.x_train), jobs[0].spec.train.batch_size)
    units, generators = ready_units(jobs, splits, device, bounds)
    assert len(units) == 1, [len(u.jobs) for u in units]
    unit = units[0]
    orders = torch.stack([torch.randperm(len(splits.x_train), device=device, generator=generators[id(j)])
                          for j in unit.jobs])
    return unit, splits, bounds, orders


def part_loop(fashion: str) -> None:
    unit, splits, bounds, orders = seed001_unit(fashion)
    full = [(a, b) for a, b in bounds if b - a == bounds[0][1] - bounds[0][0]]
    step = unit.steps[full[0][1] - full[0][0]]

    def epoch():
        for i, (a, b) in enumerate(full):
            unit.step(orders, a, b, i)
        torch.cuda.current_stream().wait_stream(unit.stream)

    epoch()  # warm
    torch.cuda.synchronize()
    started = time.perf_counter()
    epoch()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - started) / len(full) * 1e3
    emit({"part": "loop", "what": "Unit.step, one epoch of full batches", "steps": len(full), "ms_per_step": round(wall, 4)})

    def replays(n=1000):
        for _ in range(n):
            step.graph.replay()
    ms = cuda_ms(replays) / 1000
    emit({"part": "loop", "what": "the full-batch graph replayed back to back", "ms_per_step": round(ms, 4)})

    def copy_and_replay(n=1000):
        for i in range(n):
            a, b = full[i % len(full)]
            step.index.copy_(orders[:, a:b])
            step.graph.replay()
    ms = cuda_ms(copy_and_replay) / 1000
    emit({"part": "loop", "what": "index copy + replay, no contexts", "ms_per_step": round(ms, 4)})

    # The loop's steps under the profiler: what the GPU did against the wall.
    from torch.profiler import ProfilerActivity, profile
    steps = 200
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            a, b = full[i]
            unit.step(orders, a, b, i)
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    (OUT / "profile_loop.txt").write_text(events.table(sort_by="self_cuda_time_total", row_limit=40))
    emit({"part": "loop", "what": "profiled loop", "steps": steps,
          "gpu_kernel_us_per_step": round(kernel_us / steps, 2)})
    try:
        prof.export_chrome_trace(str(OUT / "trace_loop.json"))
    except Exception as e:  # noqa: BLE001
        emit({"part": "loop", "trace_error": str(e)})


def part_multi(fashion: str, sizes: list[int]) -> None:
    from relulab.packing.steps import put_back

    unit, splits, bounds, orders = seed001_unit(fashion)
    batch = bounds[0][1] - bounds[0][0]
    full = [(a, b) for a, b in bounds if b - a == batch]
    step = unit.steps[batch]
    params = unit.stack.params
    for size in sizes:
        block = torch.empty(size, *step.index.shape, dtype=step.index.dtype, device=step.index.device)
        graph = torch.cuda.CUDAGraph()
        with put_back(step.state()):
            with torch.cuda.graph(graph, pool=step.graph.pool()):
                for s in range(size):
                    step.index.copy_(block[s])
                    step._step()
        # The same S steps two ways, from the same weights.
        start = params.detach().clone()
        block.copy_(torch.stack([orders[:, a:b] for a, b in full[:size]]))
        graph.replay()
        torch.cuda.synchronize()
        by_multi = params.detach().clone()
        params.data.copy_(start)
        for a, b in full[:size]:
            step.index.copy_(orders[:, a:b])
            step.graph.replay()
        torch.cuda.synchronize()
        diff = (params.detach() - by_multi).abs().max().item()
        params.data.copy_(start)

        def replays(n=max(1, 1024 // size)):
            for i in range(n):
                block.copy_(torch.stack([orders[:, a:b] for a, b in full[(i * size) % (len(full) - size):][:size]]))
                graph.replay()
        count = max(1, 1024 // size)
        ms = cuda_ms(replays) / (count * size)
        emit({"part": "multi", "steps_per_graph": size, "ms_per_step": round(ms, 4), "max_diff_vs_single": diff})


# ---- run-kernel variants: activations held transposed, the weight the product's left operand ----

@triton.jit
def _transposed_tile(K, B, WIDTH, BLOCK_B: tl.constexpr, BLOCK_W: tl.constexpr):
    """Both variants' indices for model k = program 0 and BLOCK_B rows of its batch, held transposed (width, rows):
    (k, rw, the tile's mask and offsets, the weight's mask, a layer's parameters, a layer's activations)."""
    k = tl.program_id(0)
    rb = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    rw = tl.arange(0, BLOCK_W)
    tile_t = (rw[:, None] < WIDTH) & (rb[None, :] < B)
    square = (rw[:, None] < WIDTH) & (rw[None, :] < WIDTH)
    offsets_t = k * B * WIDTH + rb[None, :] * WIDTH + rw[:, None]
    return k, rw, tile_t, offsets_t, square, WIDTH * WIDTH + WIDTH, K * B * WIDTH


@triton.jit
def _forward_t(act_ptr, p_ptr, code_ptr, K, B, WIDTH, LAYERS, row_stride,
               BLOCK_B: tl.constexpr, BLOCK_W: tl.constexpr, PRECISION: tl.constexpr, STAGES: tl.constexpr):
    k, rw, tile_t, offsets_t, square, layer_size, slab = _transposed_tile(K, B, WIDTH, BLOCK_B, BLOCK_W)
    p_ptr += k * row_stride
    h_t = tl.load(act_ptr + offsets_t, mask=tile_t, other=0.0)
    for l in tl.range(LAYERS, num_stages=STAGES):
        w_ptr = p_ptr + l * layer_size
        w = tl.load(w_ptr + rw[:, None] * WIDTH + rw[None, :], mask=square, other=0.0)  # w[o, i]
        bias = tl.load(w_ptr + WIDTH * WIDTH + rw, mask=rw < WIDTH, other=0.0)
        z_t = tl.dot(w, h_t, input_precision=PRECISION) + bias[:, None]
        h_t = activate_by_select(z_t, tl.load(code_ptr + k * LAYERS + l))
        tl.store(act_ptr + (l + 1) * slab + offsets_t, h_t, mask=tile_t)


@triton.jit
def _backward_t(g_ptr, act_ptr, p_ptr, code_ptr, delta_ptr, dx_ptr, K, B, WIDTH, LAYERS, row_stride,
                BLOCK_B: tl.constexpr, BLOCK_W: tl.constexpr, WRITE_DX: tl.constexpr, PRECISION: tl.constexpr,
                STAGES: tl.constexpr):
    k, rw, tile_t, offsets_t, square, layer_size, slab = _transposed_tile(K, B, WIDTH, BLOCK_B, BLOCK_W)
    p_ptr += k * row_stride
    g_t = tl.load(g_ptr + offsets_t, mask=tile_t, other=0.0)
    for step in tl.range(LAYERS, num_stages=STAGES):
        l = LAYERS - 1 - step
        y_t = tl.load(act_ptr + (l + 1) * slab + offsets_t, mask=tile_t, other=0.0)
        w_t = tl.load(p_ptr + l * layer_size + rw[None, :] * WIDTH + rw[:, None], mask=square, other=0.0)
        delta_t = g_t * activation_grad(y_t, tl.load(code_ptr + k * LAYERS + l))
        tl.store(delta_ptr + l * slab + offsets_t, delta_t, mask=tile_t)
        g_t = tl.dot(w_t, delta_t, input_precision=PRECISION)
    if WRITE_DX:
        tl.store(dx_ptr + offsets_t, g_t, mask=tile_t)


def seed001_run(row_stride: int):
    """Seed 001's run of 48 layers of 100 -> 100 for 20 models, its weights at the place the stack puts them in rows
    of `row_stride` values (751,410 before rows were padded, 751,424 since), activations of all four kinds."""
    device = torch.device("cuda")
    k, batch, width, layers, offset = 20, 32, 100, 48, 265600  # the run starts after 784 -> 300 -> 100
    torch.manual_seed(0)
    params = torch.zeros(k, row_stride, device=device)  # the same weights at both strides, the padding zero
    params[:, :751410] = torch.randn(k, 751410, device=device) * (2 / width) ** 0.5
    w = params[:, offset:]
    codes = torch.tensor([[(1, 1, 2, 3)[m % 4]] * layers for m in range(k)], dtype=torch.int32, device=device)
    acts = torch.zeros(layers + 1, k, batch, width, device=device)
    acts[0] = torch.rand(k, batch, width, device=device)
    g = torch.randn(k, batch, width, device=device) * 1e-2
    return w, codes, acts, g


def graph_ms(launch, count: int = 20) -> float:
    """ms of one launch, from a CUDA graph of `count` of them."""
    launch()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(count):
            launch()
    return cuda_ms(graph.replay, 7) / count


def part_kernels() -> None:
    """The library's run kernels on rows of 751,410 values (8-byte aligned: Triton loads one float at a time) and of
    751,424 (64-byte aligned: 16-byte vectors); the outputs must agree."""
    found = {}
    for row_stride in (751410, 751424):
        w, codes, acts, g = seed001_run(row_stride)
        deltas, dx = torch.zeros(acts.shape[0] - 1, *g.shape, device=g.device), torch.zeros_like(g)
        dw = torch.zeros_like(w)
        fused_triton.run_forward(acts, w, codes)
        fused_triton.run_backward(g, acts, w, codes, deltas, dx)
        fused_triton.run_weight_grad(acts, deltas, dw)
        found[row_stride] = (acts, deltas, dx, dw[:, :48 * 10100])
        emit({"part": "kernels", "row_stride": row_stride,
              "forward_ms": round(graph_ms(lambda: fused_triton.run_forward(acts, w, codes)), 4),
              "backward_ms": round(graph_ms(lambda: fused_triton.run_backward(g, acts, w, codes, deltas, dx)), 4),
              "weight_grad_ms": round(graph_ms(lambda: fused_triton.run_weight_grad(acts, deltas, dw)), 4)})
    emit({"part": "kernels", "aligned_vs_unaligned_max_diff":
          max((a - b).abs().max().item() for a, b in zip(found[751410], found[751424]))})


def part_transposed(configs: list[tuple[int, int, int]], row_stride: int = 751410) -> None:
    """The transposed variants (`_forward_t`, `_backward_t`) against the library's run kernels, per configuration
    BLOCK_B:warps:stages; the outputs must agree."""
    w, codes, acts, g = seed001_run(row_stride)
    k, batch, width, layers = acts.shape[1], acts.shape[2], acts.shape[3], acts.shape[0] - 1
    deltas, dx = torch.zeros(layers, *g.shape, device=g.device), torch.zeros_like(g)
    fused_triton.run_forward(acts, w, codes)
    fused_triton.run_backward(g, acts, w, codes, deltas, dx)

    def forward_t(out, block_b, warps, stages):
        _forward_t[(k, triton.cdiv(batch, block_b))](out, w, codes, k, batch, width, layers, w.stride(0),
                                                     BLOCK_B=block_b, BLOCK_W=128, PRECISION="tf32", STAGES=stages,
                                                     num_warps=warps, num_stages=stages)

    def backward_t(out_deltas, out_dx, block_b, warps, stages):
        _backward_t[(k, triton.cdiv(batch, block_b))](g, acts, w, codes, out_deltas, out_dx, k, batch, width, layers,
                                                      w.stride(0), BLOCK_B=block_b, BLOCK_W=128, WRITE_DX=True,
                                                      PRECISION="tf32", STAGES=stages, num_warps=warps,
                                                      num_stages=stages)

    for block_b, warps, stages in configs:
        name = f"transposed {block_b}:{warps}:{stages}"
        try:
            out, out_deltas, out_dx = acts.clone(), torch.zeros_like(deltas), torch.zeros_like(dx)
            fwd_ms = graph_ms(lambda: forward_t(out, block_b, warps, stages))
            bwd_ms = graph_ms(lambda: backward_t(out_deltas, out_dx, block_b, warps, stages))
            emit({"part": "transposed", "variant": name, "forward_ms": round(fwd_ms, 4), "backward_ms": round(bwd_ms, 4),
                  "acts_diff": (out - acts).abs().max().item(), "deltas_diff": (out_deltas - deltas).abs().max().item(),
                  "dx_diff": (out_dx - dx).abs().max().item()})
        except Exception as e:  # noqa: BLE001 - too much shared memory, say: recorded, not fatal
            emit({"part": "transposed", "variant": name, "error": f"{type(e).__name__}: {str(e)[:300]}"})


def part_stages(configs: list[tuple[int, int, int]], row_stride: int = 751424) -> None:
    """The library's run kernels under other launch settings BLOCK_B:warps:stages, the forward and the backward each
    alone (`fused_triton.RUN_FORWARD_CONFIG`, `RUN_BACKWARD_CONFIG`); the outputs must agree with the settings kept.
    Stages > 1 let Triton's pipeliner copy the next layers' weights (and, backward, activations) into shared memory
    while this layer's product runs."""
    w, codes, acts, g = seed001_run(row_stride)
    deltas, dx = torch.zeros(acts.shape[0] - 1, *g.shape, device=g.device), torch.zeros_like(g)
    kept = dict(fused_triton.RUN_FORWARD_CONFIG), dict(fused_triton.RUN_BACKWARD_CONFIG)
    fused_triton.run_forward(acts, w, codes)
    fused_triton.run_backward(g, acts, w, codes, deltas, dx)
    for block_b, warps, stages in configs:
        record = {"part": "stages", "config": f"{block_b}:{warps}:{stages}"}
        settings = dict(BLOCK_B=block_b, num_warps=warps, num_stages=stages)
        out, out_deltas, out_dx = acts.clone(), torch.zeros_like(deltas), torch.zeros_like(dx)
        out[1:] = 0
        for name, config, launch in (
                ("forward", fused_triton.RUN_FORWARD_CONFIG, lambda: fused_triton.run_forward(out, w, codes)),
                ("backward", fused_triton.RUN_BACKWARD_CONFIG,
                 lambda: fused_triton.run_backward(g, acts, w, codes, out_deltas, out_dx))):
            config.update(settings)
            fell_back = launches.one_stage_launches()
            try:
                record[f"{name}_ms"] = round(graph_ms(launch), 4)
            except Exception as e:  # noqa: BLE001 - recorded, not fatal
                record[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
            if launches.one_stage_launches() > fell_back:  # the GPU's shared memory did not hold the stages asked
                record[f"{name}_ran_on_one_stage"] = True
            config.clear()
            config.update(kept[0] if name == "forward" else kept[1])
        record.update(acts_diff=(out - acts).abs().max().item(), deltas_diff=(out_deltas - deltas).abs().max().item(),
                      dx_diff=(out_dx - dx).abs().max().item())
        emit(record)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fashion", help="folder of Fashion-MNIST's IDX files (parts loop, multi)")
    parser.add_argument("--parts", default="loop,multi,kernels")
    parser.add_argument("--multi", default="8,32", help="steps a graph, part multi")
    parser.add_argument("--configs", default="8:4:1,8:4:2,8:4:3,16:4:1,16:4:2,16:4:3,16:8:1,16:8:2,16:8:3,"
                        "32:4:1,32:4:2,32:8:1,32:8:2",
                        help="parts transposed and stages: the kernels' BLOCK_B:warps:stages")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    emit({"part": "machine", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
          "triton": triton.__version__})
    if "kernels" in parts:
        part_kernels()
    configs = [tuple(int(v) for v in c.split(":")) for c in args.configs.split(",")]
    if "transposed" in parts:
        part_transposed(configs)
    if "stages" in parts:
        part_stages(configs)
    if "loop" in parts:
        part_loop(args.fashion)
    if "multi" in parts:
        part_multi(args.fashion, [int(s) for s in args.multi.split(",")])


if __name__ == "__main__":
    main()
