"""What a kill mid-pack costs with and without saving training in progress (relulab.resume).

A pack of MLPs on synthetic data (CPU) is run four ways, each a real `relulab run` process:
unbroken without saves (checkpoint_every: null), unbroken saving after every epoch (the cost of saving),
and killed with SIGKILL once its save has reached --kill-at, then run again: the second process goes on
from the save. Without saves the second process would have to train the whole pack again, which takes as
long as the unbroken run.

Every process runs with glibc's malloc thresholds fixed (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_):
with its dynamic defaults, CPU training speed depends on which big buffers happen to have been freed before
(a process that saves after each epoch trained 1.4-1.8x faster than one that did not, for that reason
alone), which would hide the cost of saving.

    python benchmarks/resume_timing.py --epochs 30 --kill-at 20 --out results/resume/resume.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "robustness")]
import chaos  # noqa: E402  (tests/robustness/chaos.py: the same kill the test suite makes)

SPEC = """\
name: resume
device: cpu
threads: 1
checkpoint_every: {every}
seeds: [0, 1, 2, 3]
data: {{name: synthetic, options: {{n: 6000, classes: 4, size: 8}}}}
model: {{name: deep-mlp, widths: [256, 256, 256, 256], init: he_normal}}
train: {{epochs: {epochs}, batch_size: 32, optimizer: {{name: adam, lr: 0.001}}}}
configs:
  relu: {{}}
  tanh: {{model: {{activation: tanh}}}}
"""


def timed_run(spec: Path, store: Path) -> float:
    started = time.monotonic()
    proc = chaos.start(spec, store)
    _, err = proc.communicate(timeout=3600)
    assert proc.returncode == 0, err
    return time.monotonic() - started


STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(256 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


def main() -> None:
    os.environ.update(STEADY_MALLOC)  # inherited by every relulab process below
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--kill-at", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "resume" / "resume.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        specs = {}
        for every in ("null", "0"):
            specs[every] = folder / f"every-{every}.yaml"
            specs[every].write_text(SPEC.format(every=every, epochs=args.epochs))
        unbroken = timed_run(specs["null"], folder / "unbroken.sqlite")
        saving = timed_run(specs["0"], folder / "saving.sqlite")
        started = time.monotonic()
        saved = chaos.kill_mid_pack(specs["0"], folder / "killed.sqlite", args.kill_at)
        until_kill = time.monotonic() - started
        resumed = timed_run(specs["0"], folder / "killed.sqlite")
        same = chaos.histories(folder / "killed.sqlite") == chaos.histories(folder / "saving.sqlite")
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores", "command": " ".join(sys.argv), "runs": 8, "epochs": args.epochs,
              "unbroken_no_saves_s": round(unbroken, 2), "unbroken_saving_every_epoch_s": round(saving, 2),
              "killed_after_s": round(until_kill, 2), "saved_epoch_at_kill": saved, "resumed_s": round(resumed, 2),
              "without_saves_the_rerun_would_take_s": round(unbroken, 2), "resumed_histories_identical": same}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
