"""The model zoo: what a run is built from, each kind a registry keyed by name.

- `activations`: `ACTIVATIONS`, name -> `Activation` (function, derivative, recommended initializer, the code
  relulab's kernels switch on, whether it learns weights of its own);
- `init`: `INITIALIZERS`, Keras' initializers by name;
- `models`: `MODELS`, name -> `ModelEntry` (the builder, how the model packs with others, whether it is
  convolutional), and `ModelSpec`, the record a run names its model with;
- `slotify`: `slotify`, any nn.Module with its activations as named, switchable slots (a `SlottedModel`, as
  SlotNet is), and `describe`, its slots, parameters and multiply-accumulates;
- `reference`: the model registry's `python` entry, the user's own network built by a function named in the spec
  (`target: "nets.py:build"`) and slotified;
- `fold`: `fold`, a model with the layers its off slots join merged into one (dense chains, batch norms,
  valid convolutions; padded ones only approximately), and its `FoldReport`;
- `optim`: optimizers by name in PyTorch's and Keras' flavours, Keras-style weight penalties, and
  `StackedOptimizer`, the same rules for stacked weights.

The zoo imports only `relulab.core`.
"""
from relulab.zoo.activations import ACTIVATIONS, Activation, get_activation
from relulab.zoo.init import INITIALIZERS, init_layer
from relulab.zoo.models import MODELS, ModelEntry, ModelSpec, Slot, SlotNet, SlottedModel, build_model
from relulab.zoo.optim import OptimizerSpec, StackedOptimizer, build_optimizer
from relulab.zoo.slotify import ModelReport, describe, slotify
from relulab.zoo.reference import python_model  # registers MODELS["python"]

__all__ = ["ACTIVATIONS", "Activation", "INITIALIZERS", "MODELS", "ModelEntry", "ModelReport", "ModelSpec",
           "OptimizerSpec", "Slot", "SlotNet", "SlottedModel", "StackedOptimizer", "build_model", "build_optimizer",
           "describe", "get_activation", "init_layer", "python_model", "slotify"]
