"""Scale-out benchmark: one sweep through the Ray executor on 1 GPU, then on 2 GPUs (fresh stores), and the ratio.

Run on a 2-GPU machine (device kind nvidia-h200-x2), from the repository root, with Ray importable
(benchmarks/ray_gpu.md has the exact procedure for the offline GPU machine):

    python benchmarks/bench_ray.py --cifar .carry/cifar10-jpeg.tar.gz --out $OUT

Workloads (--workload):
- cnn (default): seed 000's table on the CIFAR-10 JPEG archive: the seed-cnn in its 6 configurations
  (all ReLU, no activation, ReLU off at 2; 2, 3; 7; 7, 10) x --seeds seeds x --epochs epochs, Keras Adam,
  batch 128, bf16 on CUDA: 6 x 2 x 8 = 96 model-epochs by default, about 1.5 minutes on one H100/H200.
  With 1 GPU the sweep is one task (a pack of 12 CNNs side by side on one GPU); with 2 GPUs it is two
  tasks of 6, one per GPU.
- mlp: seed 001's table on Fashion-MNIST (--fashion FOLDER): the 50-layer MLP in its 4 configurations x
  --seeds x 10 epochs, SGD batch 32, stacked 8 to a stack.
- tiny: a small synthetic sweep on CPUs, to check the script itself anywhere (--device cpu; "GPUs" are then
  CPU workers).

For each GPU count N (--gpus, default 1,2) the script starts a fresh local Ray that sees exactly N GPUs
(CUDA_VISIBLE_DEVICES=0..N-1, ray.init(num_gpus=N)), runs the sweep into a fresh store with
`relulab.experiments.run_experiment(exp, executor=RayExecutor())` (what `relulab run SPEC --executor ray`
does), and times it from the first claim to the last commit: worker start-up, each worker loading the data,
CUDA graph capture and training are all inside. Ray's own start-up is timed separately. With --in-process it
also runs the same sweep without Ray on one GPU, to show what Ray costs. It checks that every store holds
the same runs, and how far their accuracies differ (bf16 and CUDA graphs are not bit-reproducible).

Prints a JSON line per measurement and a table last; writes bench_ray.json (everything) under --out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import torch  # noqa: E402

from relulab.data import load_data  # noqa: E402
from relulab.experiments.executors import InProcessExecutor, RayExecutor  # noqa: E402
from relulab.experiments import Overrides, load_experiment, run_experiment  # noqa: E402

TINY = """\
name: bench-tiny
device: cpu
threads: 1
data: {name: synthetic, options: {n: 4000, classes: 4, size: 8}}
model: {name: deep-mlp, widths: [128, 128, 128, 128], init: he_normal}
train: {epochs: 3, batch_size: 32, optimizer: {name: sgd, lr: 0.05}}
configs:
  relu: {}
  tanh: {model: {activation: tanh}}
  elu: {model: {activation: elu}}
  selu: {model: {activation: selu}}
"""


def emit(out: Path, record: dict) -> dict:
    print(json.dumps(record), flush=True)
    with (out / "bench_ray.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    return record


def experiment(args, store: Path):
    seeds = list(range(args.seeds))
    if args.workload == "cnn":
        return load_experiment("seed000", Overrides(seeds=seeds, epochs=args.epochs, device=args.device,
                                                    data_path=args.cifar, store=str(store)))
    if args.workload == "mlp":
        return load_experiment("seed001", Overrides(seeds=seeds, epochs=args.epochs, device=args.device,
                                                    data_path=args.fashion, store=str(store)))
    spec = args.out / "bench-tiny.yaml"
    spec.write_text(TINY)
    return load_experiment(str(spec), Overrides(seeds=seeds, epochs=args.epochs, device=args.device,
                                                store=str(store)))


def stored(store: Path) -> dict[str, dict]:
    db = sqlite3.connect(store)
    db.row_factory = sqlite3.Row
    rows = {r["key"]: dict(r) for r in db.execute(
        "SELECT key, variant, seed, status, best_val_acc, final_val_acc, seconds, device, host FROM runs")}
    db.close()
    return rows


def measure(args, label: str, gpus: int, executor_factory, start_ray) -> dict:
    store = args.out / "stores" / f"{label}.sqlite"
    store.parent.mkdir(parents=True, exist_ok=True)
    for path in (store, Path(f"{store}-wal"), Path(f"{store}-shm")):
        path.unlink(missing_ok=True)  # fresh: nothing already done
    exp = experiment(args, store)
    ray_start_s = None
    if start_ray:
        import ray

        if args.device != "cpu":
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(gpus))  # Ray sees exactly these
        started = time.perf_counter()
        ray.init(address="local", num_gpus=0 if args.device == "cpu" else gpus,
                 num_cpus=gpus if args.device == "cpu" else max(2 * gpus, min(os.cpu_count() or 2, 16)),
                 object_store_memory=2 * 1024 ** 3,  # results are small; /dev/shm may be too
                 include_dashboard=False, logging_level="warning")
        ray_start_s = time.perf_counter() - started
    lines: list[str] = []
    try:
        started = time.perf_counter()
        summary = run_experiment(exp, log=lambda line: (lines.append(line), print(line, file=sys.stderr)),
                                 echo=lambda line: None, executor=executor_factory())
        wall = time.perf_counter() - started
    finally:
        if start_ray:
            import ray

            ray.shutdown()
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    runs = stored(store)
    model_epochs = sum(v.spec.train.epochs for part in exp.parts for v in part.variants) * args.seeds
    return emit(args.out, {
        "measure": label, "gpus": gpus, "executor": "ray" if start_ray else "in-process", "workload": args.workload,
        "runs": summary.trained, "planned": summary.planned, "model_epochs": model_epochs, "sweep_s": round(wall, 2),
        "model_epochs_per_s": round(model_epochs / wall, 3), "ray_start_s": None if ray_start_s is None
        else round(ray_start_s, 2), "mean_run_seconds": round(sum(r["seconds"] for r in runs.values()) /
                                                               max(1, len(runs)), 3),
        "devices": sorted({r["device"] for r in runs.values()}), "where": lines[0] if lines else "",
        "best_val_acc": {f"{r['variant']}/{r['seed']}": r["best_val_acc"] for r in runs.values()},
        "store": str(store)})


def plan(args, counts: list[int]) -> None:
    """What each measurement will run: the runs, and the tasks the Ray executor cuts them into."""
    from relulab.experiments.executors import cut_tasks
    from relulab.training.specs import Job

    exp = experiment(args, args.out / "stores" / "plan.sqlite")
    jobs = [Job(p.variant.spec, p.seed, p.key) for p in exp.planned()]
    for n in counts:
        tasks = cut_tasks(jobs, "cpu" if args.device == "cpu" else "cuda", pack=exp.pack, slots=n)
        emit(args.out, {"plan": f"ray-{n}gpu", "runs": len(jobs), "tasks": [len(t.jobs) for t in tasks],
                        "epochs": sorted({j.spec.train.epochs for j in jobs}), "data": jobs[0].spec.data.path})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=("cnn", "mlp", "tiny"), default="cnn")
    ap.add_argument("--cifar", default=".carry/cifar10-jpeg.tar.gz", help="CIFAR-10 archive (cnn workload)")
    ap.add_argument("--fashion", default=".carry/fashion-mnist", help="Fashion-MNIST folder (mlp workload)")
    ap.add_argument("--gpus", default="1,2", help="GPU counts to compare, e.g. 1,2")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per configuration (cnn 2, mlp 8, tiny 2)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (cnn 8, mlp 10, tiny 3)")
    ap.add_argument("--device", default=None, help="cuda (default) or cpu (tiny workload)")
    ap.add_argument("--in-process", action="store_true", help="also run the sweep without Ray on one GPU")
    ap.add_argument("--plan", action="store_true", help="print the runs and how they are cut into tasks, then stop")
    ap.add_argument("--out", type=Path, default=Path("bench-ray-out"))
    args = ap.parse_args()
    args.seeds = args.seeds or {"cnn": 2, "mlp": 8, "tiny": 2}[args.workload]
    args.epochs = args.epochs or {"cnn": 8, "mlp": 10, "tiny": 3}[args.workload]
    args.device = args.device or ("cpu" if args.workload == "tiny" else "cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_ray.jsonl").unlink(missing_ok=True)
    counts = [int(n) for n in args.gpus.split(",")]
    if args.plan:
        return plan(args, counts)
    if args.device != "cpu" and torch.cuda.device_count() < max(counts):
        sys.exit(f"bench_ray: --gpus {args.gpus} needs {max(counts)} GPUs, this machine has "
                 f"{torch.cuda.device_count()}")
    import ray

    info = emit(args.out, {
        "machine": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
        "ray": ray.__version__, "cpus": os.cpu_count(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]})
    if args.workload in ("cnn", "mlp"):  # decode once (cached on disk for every worker), outside the timings
        started = time.perf_counter()
        exp = experiment(args, args.out / "stores" / "warm.sqlite")
        load_data(exp.parts[0].variants[0].spec.data)
        emit(args.out, {"data_warm_s": round(time.perf_counter() - started, 2)})
    results = [measure(args, f"ray-{n}gpu", n, RayExecutor, start_ray=True) for n in counts]
    if args.in_process:
        results.append(measure(args, "in-process-1gpu", 1, InProcessExecutor, start_ray=False))
    base = results[0]
    keys = [set(r["best_val_acc"]) for r in results]
    same_runs = all(k == keys[0] for k in keys)
    spread = max((abs(r["best_val_acc"][k] - base["best_val_acc"][k]) for r in results[1:] for k in keys[0]
                  if same_runs), default=0.0)
    summary = {"info": info, "results": results, "same_runs_in_every_store": same_runs,
               "max_best_val_acc_difference": spread,
               "speedup": {r["measure"]: round(base["sweep_s"] / r["sweep_s"], 3) for r in results}}
    (args.out / "bench_ray.json").write_text(json.dumps(summary, indent=2))
    print()
    print(f"{'measure':<18} {'GPUs':>4} {'runs':>5} {'model-ep':>8} {'sweep s':>8} {'ray start s':>11} "
          f"{'model-ep/s':>10} {'vs ' + base['measure']:>16}")
    for r in results:
        start = "-" if r["ray_start_s"] is None else f"{r['ray_start_s']:.1f}"
        print(f"{r['measure']:<18} {r['gpus']:>4} {r['runs']:>5} {r['model_epochs']:>8} {r['sweep_s']:>8.1f} "
              f"{start:>11} {r['model_epochs_per_s']:>10.2f} {base['sweep_s'] / r['sweep_s']:>15.2f}x")
    print(f"same runs in every store: {same_runs}; largest best-val-acc difference from {base['measure']}: "
          f"{spread:.4f}")


if __name__ == "__main__":
    main()
