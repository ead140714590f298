"""How far a run trained packed drifts from the same run (same key: spec and seed) trained alone.

Packing changes only the order of floating-point sums (tests/packing/test_pack.py checks that the weights agree to
rounding after one step); training then amplifies that rounding, as it amplifies any small perturbation. This
measures by how much, on the CPU, for a plain MLP and for a deep batch-norm MLP with RMSprop:

    python benchmarks/drift_packed_alone.py --seeds 5 --out results/drift/drift.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from relulab.packing import pack
from relulab.data import DataSpec, load_data
from relulab.zoo.models import ModelSpec
from relulab.zoo.optim import OptimizerSpec
from relulab.training.loop import run
from relulab.training.specs import Job, RunSpec, TrainSpec

CASES = {
    "deep-mlp relu he sgd": (ModelSpec("deep-mlp", init="he_normal", widths=[100] * 8), OptimizerSpec("sgd", 0.01)),
    "bn-mlp selu lecun rmsprop": (ModelSpec("bn-mlp", activation="selu", init="lecun_uniform",
                                            widths=[512] + [64] * 10), OptimizerSpec("rmsprop", flavour="keras")),
}


def drift(model: ModelSpec, optimizer: OptimizerSpec, epochs: int, seeds: int, splits) -> dict:
    jobs = [Job(RunSpec(DataSpec("digits"), model, TrainSpec(epochs, 32, optimizer)), seed, str(seed))
            for seed in range(seeds)]
    weights, accs = [], []
    for job, packed in zip(jobs, pack.train_together(jobs, splits, torch.device("cpu"))):
        alone = run(job.spec, job.seed, "cpu", splits=splits)
        weights.append(max(float((packed.model.state_dict()[k] - v).abs().max() / v.abs().max().clamp_min(1e-12))
                           for k, v in alone.model.state_dict().items() if v.is_floating_point()))
        accs.append(abs(packed.history.final_val_acc - alone.history.final_val_acc) * 100)
    return {"epochs": epochs, "seeds": seeds, "max_relative_weight_difference": max(weights),
            "val_acc_points_mean": statistics.mean(accs), "val_acc_points_max": max(accs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", default="1,10")
    parser.add_argument("--out", type=Path, default=Path("results/drift/drift.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    splits = load_data(DataSpec("digits"))
    rows = []
    for name, (model, optimizer) in CASES.items():
        for epochs in map(int, args.epochs.split(",")):
            rows.append({"case": name, **drift(model, optimizer, epochs, args.seeds, splits)})
            print(json.dumps(rows[-1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or
                                    platform.machine(), "torch": torch.__version__, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
