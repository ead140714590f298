"""Small experiment specs the experiment, store and report tests share."""
from pathlib import Path

TINY = """\
name: tiny
description: A tiny experiment for the tests.
device: cpu
seeds: [0, 1]
data: {name: synthetic, options: {n: 240, classes: 3, size: 4}}
model: {name: deep-mlp, widths: [8, 8], init: he_normal}
train: {epochs: 2, batch_size: 32, optimizer: {name: sgd, lr: 0.05}}
configs:
  relu: {}
  tanh: {model: {activation: tanh}}
baseline: relu
"""


def write_spec(folder: Path, text: str = TINY, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path
