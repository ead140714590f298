"""Many copies of one network on one GPU: relulab's packs (K models through torch.func) against relulab one model
at a time and a plain PyTorch loop, for resnet20 and resnet18-cifar on CIFAR-10 JPEG, in one call.

Run on the GPU machine, from the repository root:

    python benchmarks/bench_user_models.py --cifar DATA/cifar10-jpeg.tar.gz --epochs 3 --packs resnet20=1,8,16,32 --out $OUT
    python benchmarks/bench_user_models.py --cifar DATA/cifar10-jpeg.tar.gz --epochs 2 --plain-seeds "" \
        --models resnet20@32-64-128 --packs resnet20@32-64-128=1:off,8:stack,8:streams --out $OUT   # another size

Every side trains the standard recipe of bench_resnet.py (SGD momentum 0.9, lr 0.1, weight decay 5e-4, batch
128, cosine schedule, random crop and flip on the GPU, bf16 autocast) on relulab's own modules. A pack of K is
K seeds (`train_many`, `max_stack=K`: one stack, up to `rules.MOST_FUNCTIONAL_STACK`); K = 1 is relulab one
model at a time (its model-epochs per second are those of running K models one by one). The plain loop is bench_resnet.plain_loop: eager, AMP,
channels-last, GPU tensors, no DataLoader. Throughput is model-epochs per second in the steady state (the
median epoch after the first; relulab's epoch time is the pack's wall time per model); the first epoch also
holds compiling and graph capture, reported as `first_epoch_s`. TFLOP/s counts the training step's FLOPs
(torch.utils.flop_counter, forward and backward at batch 128) over the training set, against the chip's own
bf16 matmul rate measured in the same call. The plain loop runs with `torch.backends.cudnn.benchmark` on (what a
competent user sets), relulab as it runs for its users: off unless --relulab-cudnn-benchmark on (calls before
2026-12-02 ran both sides with it on). Prints JSON lines, then a table; writes bench.jsonl to --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_resnet import BATCH, plain_loop, relulab_spec  # noqa: E402
from relulab.data import DataSpec, load_data  # noqa: E402
from relulab.packing import rules, train_many, train_together  # noqa: E402
from relulab.training import build_run_spec  # noqa: E402
from relulab.training.specs import Job  # noqa: E402
from relulab.zoo.models import ModelSpec, build_model  # noqa: E402


def chip_bf16_tflops(size: int = 8192, repeats: int = 50) -> float:
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e12


def model_fields(name: str) -> dict:
    """`resnet20` or, for another size of the same network, `resnet20@32-64-128` (its model.widths)."""
    base, _, widths = name.partition("@")
    return {"name": base, **({"widths": [int(w) for w in widths.split("-")]} if widths else {})}


def train_flops_per_example(name: str, input_shape, classes: int) -> float:
    """Forward and backward FLOPs of one training example (counted at batch BATCH)."""
    model = build_model(ModelSpec(**model_fields(name)), input_shape, classes).cuda()
    x = torch.randn(BATCH, *input_shape, device="cuda")
    y = torch.randint(0, classes, (BATCH,), device="cuda")
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / BATCH


def steady(seconds: list[float]) -> float:
    return statistics.median(seconds[1:] or seconds)


def relulab_pack(splits, cifar: str, name: str, epochs: int, k: int, mode: str, most: int) -> dict:
    """K seeds as one pack, in stacks of at most `most`. `mode`: how a stack's step is compiled (on, off, auto:
    relulab's rule), `stack` (compiled, and stacked even where rules.functional_stack_pays says the model is
    too big: what a stack of it would do), or `streams`: K units of one model each, their CUDA graphs side by side
    on K streams (the alternative to stacking)."""
    sections = relulab_spec(cifar, epochs, model_fields(name)["name"])
    sections["model"] = model_fields(name)
    if mode in ("on", "off", "stack"):
        sections["train"]["compile"] = mode != "off"
    jobs = [Job(build_run_spec(sections), seed, key=f"{name}-{seed}") for seed in range(k)]
    threshold = rules.FUNCTIONAL_STACK_MAX_PARAMS
    if mode == "stack":
        rules.FUNCTIONAL_STACK_MAX_PARAMS = 10**12  # measure the stack the rule would not form
    started = time.perf_counter()
    try:
        if mode == "streams":
            results = train_together(jobs, splits, torch.device("cuda"), stack_functional=False)
        else:
            results = [result for _, result in train_many(jobs, splits, "cuda", max_stack=most)]
    finally:
        rules.FUNCTIONAL_STACK_MAX_PARAMS = threshold
    wall = time.perf_counter() - started
    seconds = [e.seconds for e in results[0].history.epochs]  # the pack's epoch wall time per model
    return {"side": "relulab", "model": name, "k": k, "max_stack": most, "compile": mode, "wall_s": wall,
            "parameters": results[0].params, "first_epoch_s": seconds[0] * k, "model_epochs_per_s": 1 / steady(seconds),
            "val_acc": [max(e.val_acc for e in r.history.epochs) for r in results],
            "stacked": results[0].data.get("stacked"), "compiled": results[0].data.get("compiled")}


def plain(splits, name: str, epochs: int, seed: int) -> dict:
    row = plain_loop(splits, epochs, seed, name)
    return {"side": "plain-pytorch", "model": name, "k": 1, "compile": "off", "wall_s": sum(row["epoch_seconds"]),
            "first_epoch_s": row["epoch_seconds"][0], "model_epochs_per_s": 1 / steady(row["epoch_seconds"]),
            "val_acc": [max(row["val_acc"])]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar", required=True)
    parser.add_argument("--models", default="resnet20,resnet18-cifar")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--packs", action="append", default=[],
                        help="MODEL=K[/S][:on|off|auto|stack|streams],...: the pack sizes of one model (S: at most S "
                        "to a stack, default K), each with how its step is compiled (default --compile), stack "
                        "(compiled, stacked whatever its size), or streams: K units side by side instead of a stack; "
                        "repeatable; default 1,8,16,32 for every model. MODEL@W1-W2-W3: the model with model.widths")
    parser.add_argument("--compile", default="auto", help="auto (relulab's rule), on or off")
    parser.add_argument("--plain-seeds", default="0", help="the plain loop's seeds, e.g. 0,1")
    parser.add_argument("--relulab-cudnn-benchmark", default="off", choices=["on", "off"],
                        help="torch.backends.cudnn.benchmark for relulab's sides: off, as relulab runs (cuDNN's "
                        "heuristics pick the same algorithms in every process), or on; the plain loop's is on")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    splits = load_data(DataSpec("cifar10", path=args.cifar, split="test")).to(torch.device("cuda"))
    chip = chip_bf16_tflops()
    print(json.dumps({"chip_bf16_tflops": chip}), flush=True)
    packs = {name: [(k, k, args.compile) for k in (1, 8, 16, 32)] for name in args.models.split(",")}
    for item in args.packs:
        name, _, sizes = item.partition("=")
        packs[name] = [(int(k), int(most or k), c or args.compile)
                       for (k, _, most), c in ((ks.partition("/"), c) for ks, _, c in
                                               (s.partition(":") for s in sizes.split(",") if s))]
    rows = []
    for name in args.models.split(","):
        flops = train_flops_per_example(name, splits.input_shape, splits.num_classes) * len(splits.x_train)
        plains = map(int, args.plain_seeds.split(",")) if "@" not in name and args.plain_seeds else []
        sides = [({"side": "plain-pytorch", "seed": seed}, lambda seed=seed: plain(splits, name, args.epochs, seed))
                 for seed in plains]
        sides += [({"side": "relulab", "k": k, "max_stack": most, "compile": c},
                   lambda k=k, most=most, c=c: relulab_pack(splits, args.cifar, name, args.epochs, k, c, most))
                  for k, most, c in packs.get(name, [])]
        for what, side in sides:
            torch.backends.cudnn.benchmark = what["side"] == "plain-pytorch" or args.relulab_cudnn_benchmark == "on"
            what["cudnn_benchmark"] = torch.backends.cudnn.benchmark
            try:
                row = {**side(), "cudnn_benchmark": what["cudnn_benchmark"]}
            except Exception as error:  # one failing variant must not lose the others' numbers
                row = {"model": name, **what, "error": f"{type(error).__name__}: {str(error)[:300]}",
                       "trace": traceback.format_exc()[-1500:]}
            row["tflops"] = row.get("model_epochs_per_s", 0) * flops / 1e12
            row["chip_bf16_tflops"] = chip
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "trace"}), flush=True)
            with open(args.out / "bench.jsonl", "a") as f:
                f.write(json.dumps(row, default=str) + "\n")
            torch.cuda.empty_cache()
    print(f"\n{'model':22} {'side':14} {'K':>3} {'compile':>7} {'model-epochs/s':>14} {'vs plain':>8} "
          f"{'TFLOP/s':>8} {'first epoch s':>13} {'best val acc':>12}")
    for row in rows:
        if "error" in row:
            print(f"{row['model']:22} error: {row['error'][:120]}")
            continue
        measured = [r for r in rows if r["model"] == row["model"] and "error" not in r]
        plains = [r for r in measured if r.get("side") == "plain-pytorch"] or \
            [r for r in measured if r.get("k") == 1] or [row]  # widths: against one alone
        base = {"model_epochs_per_s": statistics.mean(r["model_epochs_per_s"] for r in plains)}
        print(f"{row['model']:22} {row['side']:14} {row['k']:>3} {row['compile']:>7} "
              f"{row['model_epochs_per_s']:>14.3f} {row['model_epochs_per_s'] / base['model_epochs_per_s']:>7.2f}x "
              f"{row['tflops']:>8.1f} {row['first_epoch_s']:>13.1f} "
              f"{statistics.mean(row['val_acc']) * 100:>11.2f}%")


if __name__ == "__main__":
    main()
