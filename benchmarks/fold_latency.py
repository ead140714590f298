"""Inference latency before and after folding the linear slots (relulab.zoo.fold), at batch 1 and 256.

    python benchmarks/fold_latency.py --device cpu --threads 1 --out results/fold-latency-cpu
    python benchmarks/fold_latency.py --device cuda --out $OUT        # on a GPU machine

The models (random weights, eval mode; latency does not depend on the values):

- `deep-mlp` of the seed (Dense 300, 49 x Dense 100, Dense 10) on Fashion-MNIST's 1x28x28, every other slot off
  (2, 4, ..., 50): each off slot's two dense layers fold into one;
- `seed-cnn` on CIFAR's 3x32x32 with slots 1, 3, 5 and 7 off: each joins two valid 3x3 convolutions into one 5x5
  (its batch norms fold too: into the conv before, or after a live slot into the next conv where no pool is
  between).

Each forward pass is timed with torch.utils.benchmark (blocked_autorange; on CUDA it synchronizes): the median
and interquartile range of the per-call times, under torch.no_grad, in float32. Prints JSON lines and a
markdown table; with --out, writes fold_latency.jsonl there.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import torch.utils.benchmark as benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from relulab.zoo.fold import fold  # noqa: E402
from relulab.zoo.models import ModelSpec, build_model  # noqa: E402

CASES = {
    "deep-mlp, slots 2,4,...,50 off": (ModelSpec("deep-mlp", widths=[300] + [100] * 49,
                                                 slots={i: "identity" for i in range(2, 51, 2)}), (1, 28, 28)),
    "seed-cnn, slots 1,3,5,7 off": (ModelSpec("seed-cnn", slots={i: "identity" for i in (1, 3, 5, 7)}),
                                    (3, 32, 32)),
}
BATCHES = (1, 256)


def time_forward(model: torch.nn.Module, x: torch.Tensor, threads: int, min_run_time: float):
    timer = benchmark.Timer("model(x)", globals={"model": model, "x": x}, num_threads=threads)
    with torch.no_grad():
        return timer.blocked_autorange(min_run_time=min_run_time)


def measure(name: str, spec: ModelSpec, shape: tuple, device: str, threads: int, min_run_time: float):
    torch.manual_seed(0)
    model = build_model(spec, shape, 10).eval()
    folded, report = fold(model)
    model, folded = model.to(device), folded.to(device)
    for batch in BATCHES:
        x = torch.randn(batch, *shape, device=device)
        row = {"model": name, "batch": batch, "device": device, "threads": threads,
               "layers": [report.layers_before, report.layers_after],
               "params": [report.params_before, report.params_after], "max_abs_diff": report.max_abs_diff}
        for side, net in (("original", model), ("folded", folded)):
            m = time_forward(net, x, threads, min_run_time)
            row[side] = {"median_ms": m.median * 1e3, "iqr_ms": m.iqr * 1e3, "measurements": len(m.times)}
        row["speedup"] = row["original"]["median_ms"] / row["folded"]["median_ms"]
        print(json.dumps(row), flush=True)
        yield row


def table(rows: list[dict]) -> str:
    lines = ["| model | batch | layers | parameters | original, median (IQR) | folded, median (IQR) | speed-up |",
             "|---|---:|---|---|---:|---:|---:|"]
    for r in rows:
        o, f = r["original"], r["folded"]
        lines.append(f"| {r['model']} | {r['batch']} | {r['layers'][0]} -> {r['layers'][1]} | "
                     f"{r['params'][0]:,} -> {r['params'][1]:,} | {o['median_ms']:.3f} ms ({o['iqr_ms']:.3f}) | "
                     f"{f['median_ms']:.3f} ms ({f['iqr_ms']:.3f}) | {r['speedup']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.utils.benchmark num_threads)")
    parser.add_argument("--min-run-time", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(json.dumps({"torch": torch.__version__, "device": device_name, "python": platform.python_version()}))
    rows = [row for name, (spec, shape) in CASES.items()
            for row in measure(name, spec, shape, args.device, args.threads, args.min_run_time)]
    print(table(rows))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fold_latency.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
