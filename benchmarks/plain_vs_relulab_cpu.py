"""resnet20 on a CIFAR-10 subset on the CPU: a plain PyTorch loop against relulab's one-model loop, same recipe.

    python benchmarks/plain_vs_relulab_cpu.py --cifar DATA/cifar10-jpeg.tar.gz --train-size 4000 --epochs 2 --seeds 0-2

bench_resnet.py's recipe (SGD momentum, lr 0.1, weight decay 5e-4, batch 128, cosine per batch, crop and flip) in
fp32, on a fixed random subset of the training set (and 2,000 validation images): whether the two sides reach
the same accuracy where relulab's resnet20s train through training.loop (which augments) rather than a pack.
Prints each side's best validation accuracy per seed and their mean.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_resnet import BATCH, LR, MOMENTUM, PADDING, WEIGHT_DECAY, crop_and_flip, relulab_spec  # noqa: E402
from relulab.core.ranges import parse_ranges  # noqa: E402
from relulab.data import DataSpec, load_data  # noqa: E402
from relulab.training import build_run_spec, run  # noqa: E402
from relulab.zoo.models import ModelSpec, build_model  # noqa: E402


def subset(splits, train_size: int):
    """A fixed random subset (the archive lists images class by class, so a prefix would be a few classes)."""
    pick = torch.randperm(len(splits.x_train), generator=torch.Generator().manual_seed(123))[:train_size]
    held = torch.randperm(len(splits.x_val), generator=torch.Generator().manual_seed(321))[:2000]
    return dataclasses.replace(splits, x_train=splits.x_train[pick], y_train=splits.y_train[pick],
                               x_val=splits.x_val[held], y_val=splits.y_val[held])


def plain(splits, epochs: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = build_model(ModelSpec("resnet20"), splits.input_shape, splits.num_classes)
    x, y = splits.x_train, splits.y_train
    padded = F.pad(x, (PADDING,) * 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * math.ceil(len(x) / BATCH))
    generator = torch.Generator().manual_seed(seed)
    accs = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), BATCH):
            idx = order[start:start + BATCH]
            loss = F.cross_entropy(model(crop_and_flip(padded[idx], generator)), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            accs.append(float((model(splits.x_val).argmax(1) == splits.y_val).float().mean()))
    return max(accs)


def relulab(splits, cifar: str, epochs: int, seed: int) -> float:
    sections = relulab_spec(cifar, epochs, "resnet20")
    sections["train"]["precision"] = "fp32"
    result = run(build_run_spec(sections), seed, "cpu", splits=splits)
    return max(e.val_acc for e in result.history.epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar", required=True)
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", default="0-2")
    args = parser.parse_args()
    splits = subset(load_data(DataSpec("cifar10", path=args.cifar, split="test")), args.train_size)
    seeds = parse_ranges(args.seeds, "--seeds")
    for name, side in (("plain", lambda s: plain(splits, args.epochs, s)),
                       ("relulab", lambda s: relulab(splits, args.cifar, args.epochs, s))):
        started = time.perf_counter()
        accs = [side(seed) for seed in seeds]
        print(f"{name}: {[round(a * 100, 2) for a in accs]} mean {statistics.mean(accs) * 100:.2f}% "
              f"({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
