"""resnet18-cifar on CIFAR-10 with the standard recipe: relulab against a plain PyTorch training loop, same call.

Run on the GPU machine, from the repository root:

    python benchmarks/bench_resnet.py --cifar DATA/cifar10-jpeg.tar.gz --epochs 15 --seeds 0,1 --out $OUT

The recipe (both sides): SGD lr 0.1, momentum 0.9, weight decay 5e-4, batch 128, cosine schedule over the run,
random crop (4 pixels of zero padding) and horizontal flip, bf16 autocast. The plain loop is what a competent
user writes: the data as GPU tensors (no DataLoader), augmentation on the GPU, channels-last, one validation
pass per epoch; it trains relulab's own `resnet18-cifar` module, so both sides train the same network. Both
read the same decoded data (decoding is not timed). Prints JSON lines, then a table; writes bench.jsonl to --out.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from relulab.data import DataSpec, load_data  # noqa: E402
from relulab.training import build_run_spec, run  # noqa: E402
from relulab.zoo.models import ModelSpec, build_model  # noqa: E402

LR, MOMENTUM, WEIGHT_DECAY, BATCH, PADDING = 0.1, 0.9, 5e-4, 128, 4


def relulab_spec(cifar: str, epochs: int, model: str = "resnet18-cifar") -> dict:
    """The recipe as relulab spec sections (the fields a YAML spec would hold)."""
    return {"data": {"name": "cifar10", "path": cifar, "split": "test"},
            "model": {"name": model},
            "train": {"epochs": epochs, "batch_size": BATCH, "precision": "bf16",
                      "optimizer": {"name": "momentum", "lr": LR, "momentum": MOMENTUM,
                                    "weight_decay": WEIGHT_DECAY, "weight_decay_kind": "l2"},
                      "schedule": {"name": "cosine"},
                      "augment": {"crop_padding": PADDING, "flip": True}}}


def crop_and_flip(padded: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random 32x32 window of each zero-padded image, flipped left-right with probability 1/2: on the GPU,
    by index arithmetic over the whole batch."""
    n, _, height, width = padded.shape
    size_h, size_w = height - 2 * PADDING, width - 2 * PADDING
    dy = torch.randint(0, 2 * PADDING + 1, (n,), device=padded.device, generator=generator)
    dx = torch.randint(0, 2 * PADDING + 1, (n,), device=padded.device, generator=generator)
    rows = (dy[:, None] + torch.arange(size_h, device=padded.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(size_w, device=padded.device))[:, None, None, :]
    flip = torch.rand(n, device=padded.device, generator=generator) < 0.5
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(n, device=padded.device)[:, None, None, None]
    channels = torch.arange(padded.shape[1], device=padded.device)[None, :, None, None]
    return padded[batch, channels, rows, cols]


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(x), 1024):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            correct += (model(x[start:start + 1024]).argmax(1) == y[start:start + 1024]).sum()
    model.train()
    return float(correct) / len(x)


def plain_loop(splits, epochs: int, seed: int, name: str = "resnet18-cifar") -> dict:
    """A plain PyTorch loop, eager: what relulab is measured against."""
    torch.manual_seed(seed)
    device = torch.device("cuda")
    model = build_model(ModelSpec(name), splits.input_shape, splits.num_classes).to(device)
    model = model.to(memory_format=torch.channels_last)
    x_train, y_train = splits.x_train.to(device), splits.y_train.to(device)
    x_val, y_val = splits.x_val.to(device).contiguous(memory_format=torch.channels_last), splits.y_val.to(device)
    padded = F.pad(x_train, (PADDING,) * 4)
    steps_per_epoch = math.ceil(len(x_train) / BATCH)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    generator = torch.Generator(device=device).manual_seed(seed)
    epoch_seconds, val_accs = [], []
    for _ in range(epochs):
        torch.cuda.synchronize()
        started = time.perf_counter()
        order = torch.randperm(len(x_train), device=device, generator=generator)
        for start in range(0, len(x_train), BATCH):
            idx = order[start:start + BATCH]
            xb = crop_and_flip(padded[idx], generator).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(xb), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        val_accs.append(accuracy(model, x_val, y_val))  # reads back: the epoch's time includes its wait
        epoch_seconds.append(time.perf_counter() - started)
    return {"side": "plain-pytorch", "seed": seed, "epoch_seconds": epoch_seconds, "val_acc": val_accs}


def relulab_run(splits, cifar: str, epochs: int, seed: int) -> dict:
    spec = build_run_spec(relulab_spec(cifar, epochs))
    result = run(spec, seed, "cuda", splits=splits)
    return {"side": "relulab", "seed": seed, "epoch_seconds": [e.seconds for e in result.history.epochs],
            "val_acc": [e.val_acc for e in result.history.epochs], "data": result.data}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar", required=True)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    splits = load_data(DataSpec("cifar10", path=args.cifar, split="test"))
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in map(int, args.seeds.split(",")):
        for side in (plain_loop, lambda s, e, k: relulab_run(s, args.cifar, e, k)):
            row = side(splits, args.epochs, seed)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "data"}), flush=True)
            with open(args.out / "bench.jsonl", "a") as f:
                f.write(json.dumps(row, default=str) + "\n")
    print(f"\n{'side':14} {'seed':>4} {'s/epoch (median after the first)':>34} {'best val acc':>13} {'final':>7}")
    for row in rows:
        steady = statistics.median(row["epoch_seconds"][1:] or row["epoch_seconds"])
        print(f"{row['side']:14} {row['seed']:>4} {steady:>34.2f} {max(row['val_acc']) * 100:>12.2f}% "
              f"{row['val_acc'][-1] * 100:>6.2f}%")


if __name__ == "__main__":
    main()
