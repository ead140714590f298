"""Benchmark: how long a user's first `relulab train` takes on a fresh machine, against the same command run again.

A first run pays for what later runs find cached: the decoded dataset (relulab's cache, $RELULAB_CACHE) and the
compiled GPU kernels (Triton's cache, $TRITON_CACHE_DIR; torch.compile's, $TORCHINDUCTOR_CACHE_DIR). Each case
runs the command in a fresh process with those caches pointed at fresh or already-filled folders, so "cold" means
what a fresh machine sees. $RELULAB_COMPILE_THREADS=0 compiles each kernel when it is first launched (how relulab
did before `relulab.kernels.launches`); unset, a unit compiles all of its kernels at once on a thread pool first.

    python benchmarks/first_run.py --data DATA/cifar10-jpeg.tar.gz --out OUT [--cases cold-serial,cold,warm]

Writes first_run.jsonl under OUT (one line per case, as it finishes: wall seconds, the command's stderr lines
that say what was compiled) and prints a table. BENCHMARKS.md, "The first run", quotes it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The measurement: 16 seed-cnns, 2 epochs, the seed-000 recipe on CIFAR-10 JPEG.
COMMAND = ["-m", "relulab", "train", "-d", "cifar10", "--split", "test", "-m", "seed-cnn", "--optimizer", "adam",
           "--flavour", "keras", "-b", "128", "-e", "2", "--seeds", "0-15"]

# case -> (data cache warm, kernel caches warm, compile threads: None = relulab's default)
CASES = {
    "cold-serial": (False, False, "0"),  # a fresh machine, kernels compiled as first launched
    "cold": (False, False, None),  # a fresh machine, kernels compiled at once
    "warm-data-serial": (True, False, "0"),  # the data decoded before, no kernel compiled yet
    "warm-data": (True, False, None),
    "warm": (True, True, None),  # the command run again
}


def run_case(name: str, data: str, root: Path, out: Path) -> dict:
    data_warm, kernels_warm, threads = CASES[name]
    env = dict(os.environ, PYTHONPATH=str(Path("src").resolve()))
    # The "cold" case fills root/data and root/kernels, which the warm cases read; the other cold cases get new,
    # empty folders. (Not a fresh folder renamed afterwards: Triton's cache records its files by absolute path,
    # and a moved cache misses.)
    fills = name == "cold"
    env["RELULAB_CACHE"] = str(root / "data") if data_warm or fills else tempfile.mkdtemp(dir=root)
    kernels = root / "kernels" if kernels_warm or fills else Path(tempfile.mkdtemp(dir=root))
    env["TRITON_CACHE_DIR"], env["TORCHINDUCTOR_CACHE_DIR"] = str(kernels / "triton"), str(kernels / "inductor")
    env.pop("RELULAB_COMPILE_THREADS", None)
    if threads is not None:
        env["RELULAB_COMPILE_THREADS"] = threads
    started = time.perf_counter()
    command = [*COMMAND, "--data-path", data] if data else COMMAND
    done = subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    said = [line for line in done.stderr.splitlines() if line.startswith("relulab:")]
    row = {"case": name, "wall_s": round(wall, 2), "rc": done.returncode, "data_cache_warm": data_warm,
           "kernel_cache_warm": kernels_warm, "compile_threads": threads or "default", "said": said,
           "stdout_tail": done.stdout[-600:], "stderr_tail": done.stderr[-600:] if done.returncode else ""}
    with open(out / "first_run.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"{name}: {wall:.1f} s, rc {done.returncode}; {' | '.join(said)}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="", help="CIFAR-10 (cifar10-jpeg.tar.gz or cifar-10-python.tar.gz)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--cases", default="cold-serial,cold,warm-data-serial,warm-data,warm")
    parser.add_argument("--smoke", action="store_true", help="digits on the CPU, to check the script")
    args = parser.parse_args()
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        sys.exit(f"error: --cases: unknown {unknown}; expected some of {', '.join(CASES)}")
    if any(CASES[c][0] or CASES[c][1] for c in cases) and "cold" not in cases:
        sys.exit("error: --cases: the warm cases reuse the caches the 'cold' case fills: list 'cold' too")
    if args.smoke:  # a CPU check of the script itself: one small model on digits
        COMMAND[:] = ["-m", "relulab", "train", "-m", "deep-mlp", "-e", "1", "--seeds", "0-1", "--device", "cpu"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="relulab-first-run-"))
    # "cold" fills the caches the warm cases read, so it runs before them whatever the order asked
    order = sorted(cases, key=lambda c: (CASES[c][0] or CASES[c][1], c != "cold"))
    rows = [run_case(name, args.data, root, out) for name in order]
    print("\n| case | data cache | kernel caches | compile threads | wall (s) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {'warm' if r['data_cache_warm'] else 'cold'} | "
              f"{'warm' if r['kernel_cache_warm'] else 'cold'} | {r['compile_threads']} | {r['wall_s']} |")


if __name__ == "__main__":
    main()
