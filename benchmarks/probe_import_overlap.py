"""Can the report's imports hide behind seed 001's GPU-bound epochs? On the GPU: replay seed 001's step (20 models,
a CUDA graph, benchmarks/probe_mlp_runs.py's) N times while another thread imports modules the report needs later
(scipy.special, matplotlib.figure), and compare the wall time with the same replays and no import.

Each case is a fresh process (a module imports once a process). The thread holds the GIL while it imports; the main
thread takes it back at each replay, after at most the interpreter's switch interval (5 ms by default), so the case
`--switch` sets a shorter one while the thread runs. Prints one JSON line a case, also to $OUT/probe_import_overlap.jsonl.

    OUT=out PYTHONPATH=src python benchmarks/probe_import_overlap.py --replays 3000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

MODULES = ("scipy.special", "matplotlib.figure")


def one_case(replays: int, overlap: bool, switch: float | None) -> dict:
    import importlib

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from probe_mlp_runs import build

    from relulab.packing import fused

    device = torch.device("cuda")
    models, stack, linear = build(20, device)
    step = fused.FusedMLP(models, stack.sizes, linear, device, True, "tf32")
    params = stack.params.detach().clone()
    x = torch.rand(20, 32, 784, device=device)
    y = torch.randint(0, 10, (20, 32), device=device)
    grad = torch.empty_like(params)
    index = torch.zeros(20, 32, dtype=torch.long, device=device)
    source = torch.randint(0, 1000, (20, 32), device=device)

    def once():
        step.gradient(params, x, y, grad)
        params.add_(grad, alpha=-1e-3)

    for _ in range(3):
        once()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        once()
    for _ in range(50):
        graph.replay()
    torch.cuda.synchronize()
    imported = {}

    def import_all():
        started = time.perf_counter()
        old = sys.getswitchinterval()
        if switch is not None:
            sys.setswitchinterval(switch)
        try:
            for name in MODULES:
                importlib.import_module(name)
        finally:
            sys.setswitchinterval(old)
        imported["thread_s"] = time.perf_counter() - started

    started = time.perf_counter()
    thread = threading.Thread(target=import_all, daemon=True) if overlap else None
    if thread is not None:
        thread.start()
    for _ in range(replays):
        index.copy_(source)  # as GraphedStep.__call__: the batch's rows, then the replay
        graph.replay()
    torch.cuda.synchronize()
    replays_s = time.perf_counter() - started
    if thread is not None:
        thread.join()
    after = time.perf_counter() - started
    if not overlap:  # the same imports afterwards, on this thread: what the command pays today
        t = time.perf_counter()
        for name in MODULES:
            importlib.import_module(name)
        imported["after_s"] = time.perf_counter() - t
        after = time.perf_counter() - started
    return {"replays": replays, "overlap": overlap, "switch": switch, "replays_s": round(replays_s, 4),
            "replays_and_imports_s": round(after, 4), **{k: round(v, 4) for k, v in imported.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replays", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        overlap, switch = args.case.split(":")
        record = one_case(args.replays, overlap == "1", float(switch) if switch else None)
        print(json.dumps(record), flush=True)
        return
    out = Path(os.environ.get("OUT", "."))
    for _ in range(args.repeats):
        for case in ("0:", "1:", "1:0.0001", "1:0.0005"):
            done = subprocess.run([sys.executable, __file__, "--replays", str(args.replays), "--case", case],
                                  capture_output=True, text=True)
            line = done.stdout.strip().splitlines()[-1] if done.returncode == 0 else json.dumps(
                {"case": case, "error": done.stderr[-800:]})
            print(line, flush=True)
            with (out / "probe_import_overlap.jsonl").open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
