"""Speed benchmark: relulab against the sources' Keras models (Keras 3 + JAX), same machine, same data.

Run on the GPU machine, from the repository root:

    python benchmarks/bench_speed.py --fashion DATA/fashion-mnist --cifar DATA/cifar10-jpeg.tar.gz \\
        --peers DATA/peers --out $OUT --parts mlp,peer-mlp,cnn,peer-cnn

Parts (each prints JSON lines; a summary table comes last):
- check:    CUDA paths against eager single runs on digits, and the fused MLP step's Triton
            kernels against their PyTorch fp32 reference (largest differences; also with TF32 products).
- kernels:  only that last comparison.
- mlp:      seed 001's table, 4 models x SEEDS seeds x 10 epochs, through relulab's train_many
            (stacked models + CUDA graphs, stacks side by side on streams) for each --max-stack
            and each --mlp-paths (fused: the default, relulab.packing.fused; autograd: the stack under
            autograd, as before the fused step) and each --mlp-precisions (fp32, tf32); wall time,
            validation accuracy per model; then one deep-mlp alone the same way.
- peer-mlp: the Keras peer on the same table, one seed (its time per model is the same for any seed).
- cnn:      seed-cnn on CIFAR-10 JPEG, packs of each --cnn-pack size side by side (1: one model alone),
            with the step compiled (--cnn-compile on), not (off), or both (off,on); in stacks
            (--cnn-stack auto, relulab.packing.stacked_cnn; unfolded: stacked, batch norms not folded) or one model a unit (off),
            up to --cnn-max-stack models a stack (auto: the library's default, 16; a bigger pack runs as stacks
            side by side).
- cnn-placements: seed 000's six slot placements trained together for 2 epochs, compiled and not:
            what compiling (once per placement, before the first epoch) adds to the wall time.
- peer-cnn: the Keras peer's seed-cnn for the same epochs (--peer-cnn-runs: which seeds), each epoch timed
            (peer_timed.py); its steady epoch time, and the ratios to it of the cnn packs timed before it in the
            same call (put peer-cnn after cnn in --parts; it may come before as well).
- matmul:   the chip's measured bf16 rate (8192^3 matrix product), for the TFLOP/s comparison.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import math
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from relulab.packing import fused, rules  # noqa: E402
from relulab.data import DataSpec, load_data  # noqa: E402
from relulab.zoo.models import ModelSpec, build_model  # noqa: E402
from relulab.zoo.optim import OptimizerSpec  # noqa: E402
from relulab.packing.pack import train_many
from relulab.training.specs import Job, RunSpec, TrainSpec  # noqa: E402

SEED001_MODELS = {  # name: (activation, initializer, SGD learning rate), as in the author's notebook
    "relu-glorot": ("relu", "glorot_uniform", 0.01),
    "relu-he": ("relu", "he_normal", 1e-3),
    "sigmoid-glorot": ("sigmoid", "glorot_uniform", 1e-3),
    "tanh-glorot": ("tanh", "glorot_uniform", 1e-3),
}


def emit(out: Path, record: dict) -> dict:
    print(json.dumps(record), flush=True)
    with (out / "bench.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    return record


def seed001_jobs(data: DataSpec, seeds: list[int], epochs: int, precision: str = "auto") -> list[Job]:
    jobs = []
    for name, (act, init, lr) in SEED001_MODELS.items():
        for seed in seeds:
            spec = RunSpec(data, ModelSpec("deep-mlp", activation=act, init=init),
                           TrainSpec(epochs, 32, OptimizerSpec("sgd", lr=lr, flavour="keras"), precision=precision))
            jobs.append(Job(spec, seed, key=name))
    return jobs


def run_jobs(jobs, splits, device, **options) -> tuple[float, list]:
    torch.cuda.synchronize()
    started = time.perf_counter()
    results = list(train_many(jobs, splits, device, **options))
    torch.cuda.synchronize()
    return time.perf_counter() - started, results


def part_mlp(args, out, device):
    """The whole table through train_many (what `relulab run` does), then variants of the stack size, path
    and float32 product precision."""
    data = DataSpec("fashion-mnist", path=args.fashion, split="first:5000")
    splits = load_data(data).to(device)
    steps = args.mlp_epochs * math.ceil(len(splits.y_train) / 32)
    for precision in args.mlp_precisions.split(","):
        jobs = seed001_jobs(data, list(range(args.seeds)), args.mlp_epochs, precision)
        for path in args.mlp_paths.split(","):
            with fused_path(path == "fused"):
                for max_stack in [int(m) for m in args.max_stack.split(",")]:
                    wall, results = run_jobs(jobs, splits, device, max_stack=max_stack)
                    rows = {}
                    for job, result in results:
                        rows.setdefault(job.key, []).append(result.history.final_val_acc)
                    emit(out, {"part": "mlp", "path": path, "precision": precision, "max_stack": max_stack,
                               "models": len(results), "epochs": args.mlp_epochs, "wall_s": round(wall, 2),
                               "ms_per_step": round(wall / steps * 1e3, 3),
                               "model_epochs_per_s": round(len(results) * args.mlp_epochs / wall, 2),
                               "final_val_acc": {k: [round(a, 4) for a in v] for k, v in rows.items()}})
                one = [j for j in jobs if j.key == "relu-he"][:1]
                wall, results = run_jobs(one, splits, device)
                emit(out, {"part": "mlp-one", "path": path, "precision": precision, "wall_s": round(wall, 2),
                           "ms_per_step": round(wall / steps * 1e3, 3),
                           "epoch_s": [round(e.seconds, 3) for e in results[0][1].history.epochs],
                           "final_val_acc": round(results[0][1].history.final_val_acc, 4)})


@contextmanager
def fused_path(on: bool):
    """With on=False, stacks train under autograd as they did before relulab.packing.fused (for a same-call
    comparison)."""
    saved = rules.fusable
    if not on:
        rules.fusable = lambda job: False
    try:
        yield
    finally:
        rules.fusable = saved


def cnn_flops_per_image(input_shape=(3, 32, 32)) -> float:
    """Training FLOPs per image of seed-cnn: 3x the forward convolutions' multiply-adds x 2."""
    model = build_model(ModelSpec("seed-cnn"), input_shape, 10).eval()
    flops = 0
    x = torch.zeros(1, *input_shape)
    for layer in model.body:
        y = layer(x)
        if isinstance(layer, torch.nn.Conv2d):
            flops += 2 * layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1] * y.numel()
        x = y
    return 3.0 * flops


def cnn_spec(data: DataSpec, epochs: int, compile: Optional[bool], slots: Optional[dict] = None) -> RunSpec:
    return RunSpec(data, ModelSpec("seed-cnn", slots=dict(slots or {})),
                   TrainSpec(epochs, 128, OptimizerSpec("adam", flavour="keras"), compile=compile))


def load_cifar(args, out, device):
    data = DataSpec("cifar10", path=args.cifar, split="test")
    started = time.perf_counter()
    splits = load_data(data).to(device)
    emit(out, {"part": "cnn-load", "seconds": round(time.perf_counter() - started, 1)})
    return data, splits


@contextmanager
def cnn_stacking(choice: str):
    """--cnn-stack off: seed-cnns train one model per unit, as before relulab.packing.stacked_cnn; unfolded: in stacks
    whose batch norms are not folded into the convolutions (auto: the default)."""
    from relulab.packing import pack, units
    default = pack.stacks_cnns
    stack_class = units.StackedCNN
    if choice == "off":
        pack.stacks_cnns = lambda jobs, device: False
    elif choice == "unfolded":  # stacked, with batch norms as kernels of their own (before the folding)
        units.StackedCNN = lambda models, triton_kernels: stack_class(models, triton_kernels, fold_batchnorm=False)
    try:
        yield
    finally:
        pack.stacks_cnns, units.StackedCNN = default, stack_class


def part_cnn(args, out, device):
    """seed-cnn packs of each --cnn-pack size, with the step compiled or not (--cnn-compile), on CIFAR-10."""
    data, splits = load_cifar(args, out, device)
    flops_epoch = cnn_flops_per_image() * len(splits.y_train)
    variants = [(stacked, {"on": True, "off": False, "auto": None}[c])
                for stacked in args.cnn_stack.split(",") for c in args.cnn_compile.split(",")]
    max_stacks = [None if m == "auto" else int(m) for m in args.cnn_max_stack.split(",")]
    for (stacked, compiled), max_stack in itertools.product(variants, max_stacks):
        for pack in [int(p) for p in args.cnn_pack.split(",")]:
            jobs = [Job(cnn_spec(data, args.cnn_epochs, compiled), seed, key="all-relu") for seed in range(pack)]
            with cnn_stacking(stacked):
                wall, results = run_jobs(jobs, splits, device, max_stack=max_stack)
            # Per-epoch times after the first (one-time work such as cuDNN's first evaluation calls lands there;
            # compiling and graph capture come before it, in wall_s), summed over the pack.
            steady = statistics.median(sum(r.history.epochs[e].seconds for _, r in results)
                                       for e in range(1, args.cnn_epochs)) if args.cnn_epochs > 1 else None
            emit(out, {"part": "cnn", "pack": pack, "max_stack": max_stack or "auto",
                       "compiled": results[0][1].data["compiled"],
                       "stacked": results[0][1].data["stacked"], "epochs": args.cnn_epochs,
                       "wall_s": round(wall, 2),
                       "first_epoch_s_for_pack": round(sum(r.history.epochs[0].seconds for _, r in results), 2),
                       "steady_epoch_s_for_pack": steady and round(steady, 3),
                       "steady_model_epochs_per_s": steady and round(pack / steady, 3),
                       "tflops": steady and round(pack * flops_epoch / steady / 1e12, 1),
                       "best_val_acc": [round(r.history.best_val_acc, 4) for _, r in results],
                       "final_val_acc": [round(r.history.final_val_acc, 4) for _, r in results]})


SEED000_PLACEMENTS = {"all-relu": {}, "off-2": {2: "identity"}, "off-2-3": {2: "identity", 3: "identity"},
                      "off-7": {7: "identity"}, "off-7-10": {7: "identity", 10: "identity"},
                      "no-activation": {i: "identity" for i in range(1, 11)}}


def part_cnn_placements(args, out, device):
    """What compiling costs: seed 000's six placements, one seed each, trained together with and without
    compiling; wall_s holds the compilations (one per placement, before the first epoch)."""
    data, splits = load_cifar(args, out, device)
    for compiled in (False, True):
        jobs = [Job(cnn_spec(data, 2, compiled, slots), 0, key=name) for name, slots in SEED000_PLACEMENTS.items()]
        wall, results = run_jobs(jobs, splits, device)
        emit(out, {"part": "cnn-placements", "compiled": results[0][1].data["compiled"],
                   "stacked": results[0][1].data["stacked"], "models": len(jobs),
                   "wall_s": round(wall, 2),
                   "epoch_s_for_pack": [round(sum(r.history.epochs[e].seconds for _, r in results), 2)
                                        for e in range(2)]})


def part_check(args, out, device):
    """CUDA paths against eager single runs on digits: packs must reproduce them."""
    from relulab.training.loop import run

    splits = load_data(DataSpec()).to(device)
    cnn_data = DataSpec(image_size=32, train_size=512)
    cnn_splits = load_data(cnn_data).to(device)
    # The MLP cases in full fp32: under precision auto both sides round their products to TF32, each in its own
    # order, and 3 epochs of that drift apart by up to 0.06 of validation loss, which would hide a real error.
    cases = [
        ("stack", splits, [Job(RunSpec(DataSpec(), ModelSpec("bn-mlp", widths=[64] * 6, init="he_normal"),
                                       TrainSpec(3, 32, OptimizerSpec("sgd", lr=0.01), precision="fp32")), s)
                           for s in (0, 1, 2)]),
        ("fused", splits, [Job(RunSpec(DataSpec(), ModelSpec("deep-mlp", widths=[64] * 6, activation=act),
                                       TrainSpec(3, 32, OptimizerSpec("sgd", lr=0.01), precision="fp32")), s)
                           for s, act in enumerate(("relu", "tanh", "sigmoid", "relu"))]),
        ("streams", cnn_splits, [Job(RunSpec(cnn_data, ModelSpec("seed-cnn"), TrainSpec(
            3, 128, OptimizerSpec("adam", flavour="keras"), precision="fp32")), s) for s in (0, 1)]),
        # bf16 seed-cnns: a stack through relulab.conv_triton against single models through cuDNN.
        ("cnn-stack", cnn_splits, [Job(RunSpec(cnn_data, ModelSpec("seed-cnn", slots=slots), TrainSpec(
            3, 128, OptimizerSpec("adam", flavour="keras"))), s) for s, slots in ((0, {}), (1, {3: "identity"}), (2, {}))]),
    ]
    for name, data, jobs in cases:
        packed = [r for _, r in train_many(jobs, data, device)]
        single = [run(j.spec, j.seed, device, splits=data) for j in jobs]
        emit(out, {"part": "check", "case": name,
                   "packed_val_loss": [[round(e.val_loss, 5) for e in r.history.epochs] for r in packed],
                   "single_val_loss": [[round(e.val_loss, 5) for e in r.history.epochs] for r in single],
                   "largest_difference": max(abs(p.val_loss - q.val_loss) for a, b in zip(packed, single)
                                             for p, q in zip(a.history.epochs, b.history.epochs))})
    check_fused_kernels(out, device)
    check_stacked_cnn(out, device)


def check_stacked_cnn(out, device):
    """One step of a stack of 4 seed-cnns (relu; identity, tanh and sigmoid in some slots) in bf16: through the
    Triton kernels with batch norms folded into them (the default), unfolded, and through cuDNN's grouped
    convolution; each one's logits and gradient against the same step in fp32."""
    from relulab.zoo.models import build_model
    from relulab.packing.stacked_cnn import StackedCNN

    torch.manual_seed(0)
    placements = [{}, {3: "identity", 7: "identity"}, {2: "tanh", 5: "tanh"}, {4: "sigmoid", 9: "sigmoid"}]
    models = [build_model(ModelSpec("seed-cnn", slots=p), (3, 32, 32), 10).to(device) for p in placements]
    x, y = torch.rand(4, 128, 3, 32, 32, device=device), torch.randint(0, 10, (4 * 128,), device=device)
    found = {}
    for name, use_triton, fold, amp in (("triton-folded", True, True, True), ("triton", True, False, True),
                                        ("cudnn", False, False, True), ("fp32", False, False, False)):
        stack = StackedCNN(models, use_triton, fold_batchnorm=fold)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = stack.forward(stack.params, x, training=True).float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(4 * 128, -1), y)
        (grad,) = torch.autograd.grad(loss, stack.params)
        found[name] = (logits, grad, torch.cat([t for pair in stack.running for t in pair]))
    z0, g0, r0 = found.pop("fp32")
    emit(out, {"part": "check", "case": "stacked-cnn-kernels", "against": "fp32", **{name: {
        "logits_max_abs_diff": (z - z0).abs().max().item(), "grad_rel_l2": ((g - g0).norm() / g0.norm()).item(),
        "running_stats_max_abs_diff": (r - r0).abs().max().item()} for name, (z, g, r) in found.items()},
        "max_abs_logit": z0.abs().max().item()})


def check_fused_kernels(out, device):
    """One step's gradient through the Triton kernels against the PyTorch reference, on the GPU,
    for seed 001's model shape with all four activations in one stack and both batch sizes of an epoch."""
    from relulab.zoo.models import build_model
    from relulab.packing.stacked_mlp import StackedMLP

    torch.manual_seed(0)
    models = [build_model(ModelSpec("deep-mlp", activation=act), (1, 28, 28), 10).to(device)
              for act in ("identity", "relu", "sigmoid", "tanh")]
    stack = StackedMLP(models)
    linear = stack.linear_layers()
    params = stack.params.detach()
    for batch, precision in ((32, "ieee"), (24, "ieee"), (32, "tf32")):
        x, y = torch.rand(len(models), batch, 784, device=device), torch.randint(0, 10, (len(models), batch), device=device)
        found = {}
        for name, use_triton in (("triton", True), ("reference", False)):
            grad = torch.empty_like(params)
            loss, logits = fused.FusedMLP(models, stack.sizes, linear, device, use_triton,
                                          precision if use_triton else "ieee").gradient(params, x, y, grad)
            found[name] = (loss, logits, grad)
        (l1, z1, g1), (l2, z2, g2) = found["triton"], found["reference"]
        emit(out, {"part": "check", "case": "fused-kernels", "batch": batch, "triton_precision": precision,
                   "reference_precision": "ieee",
                   "max_abs_diff": {"loss": (l1 - l2).abs().max().item(), "logits": (z1 - z2).abs().max().item(),
                                    "grad": (g1 - g2).abs().max().item()},
                   "max_abs_grad": g2.abs().max().item()})


def part_matmul(args, out, device):
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    emit(out, {"part": "matmul", "bf16_tflops": round(2 * 8192**3 / statistics.median(times) / 1e12, 1)})


def run_peer(args, out, script: str, script_args: list[str], part: str) -> dict:
    """One peer process, through peer_timed.py, which adds each run's epoch times ("epoch_s") to its line."""
    torch.cuda.empty_cache()  # JAX takes 75% of the GPU's memory at start: give back what PyTorch only caches
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": args.peer_site}
    timed = Path(__file__).with_name("peer_timed.py")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(timed), str(Path(args.peers) / script), *script_args], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    runs, epoch_s = [], None
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if "peer_epoch_s" in record:  # printed just before the run's own line
                epoch_s = record["peer_epoch_s"]
            else:
                runs.append({**record, "epoch_s": epoch_s})
    return emit(out, {"part": part, "returncode": proc.returncode, "process_wall_s": round(wall, 1),
                      "epochs": int(script_args[1]), "runs": runs,
                      "stderr_tail": proc.stderr[-600:] if proc.returncode else ""})


def part_peer_cnn(args, out):
    """The peer's seed-cnn; its steady epoch time (the median epoch after each run's first, which holds XLA's
    compile), and relulab's packs timed earlier in this call against it."""
    record = run_peer(args, out, "keras_seed000.py", [args.cifar, str(args.cnn_epochs), *args.peer_cnn_runs.split(",")],
                      "peer-cnn")
    steady = [s for run in record["runs"] for s in (run["epoch_s"] or [])[1:]]
    if not steady:
        return
    epoch_s = statistics.median(steady)
    rate = {"part": "peer-cnn-rate", "epochs_timed": len(steady), "steady_epoch_s": round(epoch_s, 3),
            "epoch_s_range": [round(min(steady), 3), round(max(steady), 3)],
            "model_epochs_per_s": round(1 / epoch_s, 3), "ratios": []}
    for line in (out / "bench.jsonl").read_text().splitlines():
        cnn = json.loads(line)
        if cnn.get("part") == "cnn" and cnn.get("steady_model_epochs_per_s"):
            rate["ratios"].append({"pack": cnn["pack"], "max_stack": cnn["max_stack"],
                                   "ratio": round(cnn["steady_model_epochs_per_s"] * epoch_s, 2)})
    emit(out, rate)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fashion", required=True)
    parser.add_argument("--cifar", required=True)
    parser.add_argument("--peers", required=True)
    parser.add_argument("--peer-site", default="/tmp/site")
    parser.add_argument("--out", default=".")
    parser.add_argument("--parts", default="check,matmul,mlp,cnn,peer-cnn,peer-mlp")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--mlp-epochs", type=int, default=10)
    parser.add_argument("--max-stack", default="8", help="stack sizes to try for the MLPs, e.g. 10,5,3")
    parser.add_argument("--mlp-paths", default="fused", help="fused, autograd, or both: fused,autograd")
    parser.add_argument("--mlp-precisions", default="fp32", help="train.precision of the MLPs: fp32, tf32 or fp32,tf32")
    parser.add_argument("--cnn-epochs", type=int, default=4)
    parser.add_argument("--cnn-pack", default="1,4,8", help="pack sizes to time, e.g. 1,8")
    parser.add_argument("--cnn-stack", default="auto", help="auto, unfolded, off, or a list (auto,off): seed-cnns in "
                        "stacks (relulab.packing.stacked_cnn), in stacks without batch-norm folding, or one model a unit")
    parser.add_argument("--cnn-max-stack", default="auto", help="models to a seed-cnn stack: auto (the library's "
                        "default, 16), a number, or a list (auto,32)")
    parser.add_argument("--peer-cnn-runs", default="0:all", help="the peer's SEED:SLOTS runs, comma-separated")
    parser.add_argument("--cnn-compile", default="auto", help="auto, off, on, or off,on: torch.compile the CNN step (train.compile)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    emit(out, {"part": "machine", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d %H:%M:%S")})
    parts = {
        "check": lambda: part_check(args, out, device),
        "kernels": lambda: check_fused_kernels(out, device),
        "matmul": lambda: part_matmul(args, out, device),
        "mlp": lambda: part_mlp(args, out, device),
        "peer-mlp": lambda: run_peer(args, out, "keras_seed001.py", [args.fashion, str(args.mlp_epochs), "0"],
                                     "peer-mlp"),
        "cnn": lambda: part_cnn(args, out, device),
        "cnn-placements": lambda: part_cnn_placements(args, out, device),
        "peer-cnn": lambda: part_peer_cnn(args, out),
    }
    for name in args.parts.split(","):
        try:
            parts[name]()
        except Exception as e:  # report and go on: one broken part must not cost the whole call
            emit(out, {"part": name, "error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    main()
