"""Where a functional stack's training step spends the GPU's time: K copies of a model (resnet20 by default) on
CIFAR-10 JPEG with bench_user_models.py's recipe, the stack's compiled step run eagerly (no CUDA graph, so that
the profiler sees every kernel), then torch.profiler over a few steps. Prints the kernels by GPU time, summed into
kinds (convolutions, Inductor's fused kernels, the rest), and writes profile.json to --out.

Run on the GPU machine, from the repository root:

    python benchmarks/profile_stack_step.py --cifar DATA/cifar10-jpeg.tar.gz --k 64 --out $OUT
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_resnet import BATCH, relulab_spec  # noqa: E402
from bench_user_models import model_fields  # noqa: E402
from relulab.data import DataSpec, load_data  # noqa: E402
from relulab.packing.pack import ready_units  # noqa: E402
from relulab.training import build_run_spec  # noqa: E402
from relulab.training.loop import epoch_batches  # noqa: E402
from relulab.training.specs import Job  # noqa: E402

# Kernel names by kind: cuDNN's and CUTLASS's convolution kernels, Inductor's generated Triton kernels.
KINDS = {"convolution (cuDNN)": ("conv", "cudnn", "xmma", "cutlass", "sm90_", "implicit", "wgrad", "dgrad"),
         "Inductor's fused kernels": ("triton_",)}


def kind_of(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, marks in KINDS.items() if any(m in lowered for m in marks)), "other")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar", required=True)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cudnn-benchmark", default="on", choices=["on", "off"],
                        help="torch.backends.cudnn.benchmark: on (cuDNN times its algorithms), off (its heuristics)")
    parser.add_argument("--device", default="cuda", help="cuda; cpu only to try the script")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark == "on"
    device = torch.device(args.device)
    splits = load_data(DataSpec("cifar10", path=args.cifar, split="test")).to(device)
    sections = relulab_spec(args.cifar, 2, model_fields(args.model)["name"])
    sections["model"] = model_fields(args.model)
    sections["train"]["compile"] = True
    jobs = [Job(build_run_spec(sections), seed, key=str(seed)) for seed in range(args.k)]
    bounds = epoch_batches(len(splits.x_train), BATCH)
    (unit,), generators = ready_units(jobs, splits, device, bounds, graphs=False, max_stack=args.k,
                                       stack_functional=True)
    order = torch.stack([torch.randperm(len(splits.x_train), device=device, generator=generators[id(j)])
                         for j in unit.jobs])

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def steps(first: int, count: int) -> float:
        sync()
        started = time.perf_counter()
        for i in range(first, first + count):
            unit.step(order, i * BATCH, (i + 1) * BATCH, i)
        sync()
        return (time.perf_counter() - started) / count

    started = time.perf_counter()
    steps(0, 3)  # compiles
    compile_s = time.perf_counter() - started
    step_s = steps(3, args.steps)
    with profile(activities=[ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU]) as prof:
        steps(3 + args.steps, args.steps)
    kernels = [(e.key, (e.device_time_total if device.type == "cuda" else e.self_cpu_time_total) / args.steps, e.count // args.steps)
               for e in prof.key_averages() if (e.device_time_total if device.type == "cuda" else e.self_cpu_time_total) > 0]
    kernels.sort(key=lambda row: -row[1])
    by_kind: dict[str, float] = defaultdict(float)
    for name, us, _ in kernels:
        by_kind[kind_of(name)] += us
    total = sum(by_kind.values())
    rate = args.k / (step_s * len(bounds))
    print(f"{args.k} x {args.model}: compile {compile_s:.1f} s; a step {step_s * 1e3:.2f} ms without a CUDA graph "
          f"({rate:.3f} model-epochs/s of steps alone); GPU time a step {total / 1e3:.2f} ms")
    for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:28} {us / 1e3:8.3f} ms  {us / total:6.1%}")
    for name, us, calls in kernels[:30]:
        print(f"  {us:9.1f} us  x{calls:<3} {name[:110]}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile.json").write_text(json.dumps(
        {"model": args.model, "k": args.k, "compile_s": compile_s, "step_s": step_s, "by_kind_us": by_kind,
         "cudnn_benchmark": args.cudnn_benchmark, "kernels": [{"name": n, "us_per_step": us, "calls_per_step": c} for n, us, c in kernels]}, indent=1))


if __name__ == "__main__":
    main()
