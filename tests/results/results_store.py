"""A store for the results tests: two experiments (a grid probed every epoch; a diverging run and a search)."""
import pytest

from relulab.experiments import Overrides, load_experiment, run_experiment
from relulab.search import SearchOptions, run_search
from specs import quiet, write_spec

GRID = """\
name: grid
description: Three configurations at two learning rates, probed every epoch.
device: cpu
threads: 1
seeds: [0, 1]
data: {name: synthetic, options: {n: 240, classes: 3, size: 4}}
model: {name: deep-mlp, widths: [8, 8], init: he_normal}
train: {epochs: 2, batch_size: 32, optimizer: {name: sgd, lr: 0.05}}
probes: [sparsity]
configs:
  relu: {}
  tanh: {model: {activation: tanh, init: auto}}
  off-2: {model: {off: [2]}}
grid: {train.optimizer.lr: [0.05, 0.1]}
baseline: relu
"""
# A second experiment in the same store: a run that diverges, and a search (its placements are runs outside the
# plan; it stores final-model probes too).
SEARCHED = """\
name: searched
device: cpu
threads: 1
seeds: [0, 1]
data: {name: synthetic, options: {n: 240, classes: 3, size: 4}}
model: {name: deep-mlp, widths: [8, 8], init: he_normal}
train: {epochs: 2, batch_size: 32, optimizer: {name: adam}}
configs:
  relu: {}
  huge-lr: {train: {optimizer: {name: sgd, lr: 1.0e+30}}}
baseline: relu
"""


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("results")
    path = folder / "s.sqlite"
    for text, name in ((GRID, "grid.yaml"), (SEARCHED, "searched.yaml")):
        exp = load_experiment(str(write_spec(folder, text, name)), Overrides(store=str(path)))
        run_experiment(exp, log=quiet, echo=quiet)
    run_search(exp, SearchOptions("oracle", budget=1), config="relu", log=quiet)
    return path
