"""The fused MLP step with and without the run kernels (relulab.kernels.fused_triton.run_forward and friends), on the
GPU: seed 001's model (784 -> 300 -> 100, 48 x 100 -> 100, -> 10), 20 models with mixed activations.

First the gradients: the run path against the per-layer path (both tf32) and both against the fp32 PyTorch reference.
Then one step (gradient and an SGD update, in a CUDA graph) timed for the per-layer path and for each run-kernel
configuration given. Prints one JSON line a measurement, also written to $OUT/probe_mlp_runs.jsonl.

    OUT=out python benchmarks/probe_mlp_runs.py --models 20 --configs 16:8:1,32:8:1
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch

from relulab.kernels import fused_triton, launches
from relulab.packing import fused
from relulab.packing.stacked_mlp import StackedMLP
from relulab.zoo.models import ModelSpec, build_model

ACTIVATIONS = ("relu", "relu", "sigmoid", "tanh")  # seed 001's four models: two of them ReLU


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)
    with (Path(os.environ.get("OUT", ".")) / "probe_mlp_runs.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def build(k: int, device):
    torch.manual_seed(0)
    models = [build_model(ModelSpec("deep-mlp", activation=ACTIVATIONS[i % 4], init="he_normal"), (1, 28, 28), 10)
              .to(device) for i in range(k)]
    stack = StackedMLP(models)
    linear = stack.linear_layers()
    return models, stack, linear


def check(models, stack, linear, device) -> None:
    params = stack.params.detach()
    for batch in (32, 24):
        x = torch.rand(len(models), batch, 784, device=device)
        y = torch.randint(0, 10, (len(models), batch), device=device)
        found = {}
        for name, precision, runs, triton in (("runs", "tf32", True, True), ("layers", "tf32", False, True),
                                              ("reference", "ieee", False, False)):
            step = fused.FusedMLP(models, stack.sizes, linear, device, triton, precision)
            if not runs:
                step.runs = []
            grad = torch.full_like(params, float("nan"))
            loss, logits = step.gradient(params, x, y, grad)
            found[name] = (loss, logits, grad)
        def diff(a, b):
            return {part: (u - v).abs().max().item() for part, u, v in zip(("loss", "logits", "grad"), found[a], found[b])}
        emit({"part": "check", "batch": batch, "runs_vs_layers": diff("runs", "layers"),
              "runs_vs_fp32": diff("runs", "reference"), "layers_vs_fp32": diff("layers", "reference"),
              "nan_in_runs_grad": bool(torch.isnan(found["runs"][2]).any()),
              "max_abs_grad": found["reference"][2].abs().max().item()})


def time_step(models, stack, linear, device, runs: bool, replays: int = 300) -> float:
    """Median ms of one step (gradient + SGD update) replayed from a CUDA graph."""
    step = fused.FusedMLP(models, stack.sizes, linear, device, True, "tf32")
    if not runs:
        step.runs = []
    params = stack.params.detach().clone()
    x = torch.rand(len(models), 32, 784, device=device)
    y = torch.randint(0, 10, (len(models), 32), device=device)
    grad = torch.empty_like(params)

    def once():
        step.gradient(params, x, y, grad)
        params.add_(grad, alpha=-1e-3)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            once()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        once()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / replays)
    return statistics.median(times)


def marked(record: dict, fell_back: int) -> dict:
    """`record`, saying so where a kernel ran on one stage for want of shared memory (relulab.kernels.launches) since
    `fell_back` was counted: then its time is not that of the settings it names."""
    if launches.one_stage_launches() > fell_back:
        record["ran_on_one_stage"] = True
    return record


def layer_config(text: str) -> dict:
    """BLOCK_OUT:BLOCK_IN:warps:stages as the per-layer kernels' tf32 launch settings."""
    block_out, block_in, warps, stages = (int(v) for v in text.split(":"))
    return dict(BLOCK_OUT=block_out, BLOCK_IN=block_in, num_warps=warps, num_stages=stages)


def gradient(models, stack, linear, device) -> torch.Tensor:
    """The stack's tf32 gradient on one fixed batch, through the kernels as configured now."""
    step = fused.FusedMLP(models, stack.sizes, linear, device, True, "tf32")
    generator = torch.Generator(device=device).manual_seed(1)
    x = torch.rand(len(models), 32, 784, device=device, generator=generator)
    y = torch.randint(0, 10, (len(models), 32), device=device, generator=generator)
    grad = torch.empty_like(stack.params)
    step.gradient(stack.params.detach(), x, y, grad)
    return grad


def time_layer_configs(k: int, configs: list[str], device) -> None:
    """The step with the per-layer kernels (the first two layers and the last, around the run) under other tf32
    settings, FORWARD/BACKWARD each BLOCK_OUT:BLOCK_IN:warps:stages; the gradient must equal the kept settings'."""
    models, stack, linear = build(k, device)
    kept = dict(fused_triton.FORWARD_CONFIG["tf32"]), dict(fused_triton.BACKWARD_CONFIG["tf32"])
    reference = gradient(models, stack, linear, device)
    for config in configs:
        forward, _, backward = config.partition("/")
        record = {"part": "layer-configs", "models": k, "config": config}
        fell_back = launches.one_stage_launches()
        try:
            fused_triton.FORWARD_CONFIG["tf32"] = layer_config(forward) if forward else kept[0]
            fused_triton.BACKWARD_CONFIG["tf32"] = layer_config(backward) if backward else kept[1]
            record["grad_diff"] = (gradient(models, stack, linear, device) - reference).abs().max().item()
            record["ms"] = round(time_step(models, stack, linear, device, True), 4)
        except Exception as e:  # noqa: BLE001 - recorded, not fatal
            record["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        emit(marked(record, fell_back))
    fused_triton.FORWARD_CONFIG["tf32"], fused_triton.BACKWARD_CONFIG["tf32"] = kept


def run_config(text: str) -> dict:
    """BLOCK_B:warps:stages as the run kernels' launch settings."""
    block_b, warps, stages = (int(v) for v in text.split(":"))
    return dict(BLOCK_B=block_b, num_warps=warps, num_stages=stages)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="20", help="stack sizes, e.g. 1,20,64")
    parser.add_argument("--configs", default="16:8:1",
                        help="run-kernel configurations BLOCK_B:warps:stages, the forward's and the backward's alike, "
                             "or FORWARD/BACKWARD (16:8:3/16:8:2)")
    parser.add_argument("--weight-blocks", default="32", help="BLOCK_OUT of the weight-gradient kernel")
    parser.add_argument("--layer-configs", default="",
                        help="the per-layer kernels' tf32 settings to time, FORWARD/BACKWARD each "
                             "BLOCK_OUT:BLOCK_IN:warps:stages, either side empty for the kept one (16:128:4:3/)")
    args = parser.parse_args()
    device = torch.device("cuda")
    models, stack, linear = build(20, device)
    check(models, stack, linear, device)
    for k in [int(m) for m in args.models.split(",")]:
        models, stack, linear = build(k, device)
        emit({"part": "step", "models": k, "path": "per-layer", "ms": round(time_step(models, stack, linear, device,
                                                                                       False), 4)})
        for config in args.configs.split(","):
            forward, _, backward = config.partition("/")
            for weight_block in [int(b) for b in args.weight_blocks.split(",")]:
                fused_triton.RUN_FORWARD_CONFIG.update(run_config(forward))
                fused_triton.RUN_BACKWARD_CONFIG.update(run_config(backward or forward))
                fused_triton.RUN_WEIGHT_GRAD_CONFIG.update(BLOCK_OUT=weight_block)
                fell_back = launches.one_stage_launches()
                ms = time_step(models, stack, linear, device, True)
                emit(marked({"part": "step", "models": k, "path": "runs", "config": config,
                             "weight_block": weight_block, "ms": round(ms, 4)}, fell_back))
        if args.layer_configs:
            time_layer_configs(k, args.layer_configs.split(","), device)


if __name__ == "__main__":
    main()
