"""The model zoo: what a run is built from, each kind a registry keyed by name.

- `activations`: `ACTIVATIONS`, name -> `Activation` (function, derivative, recommended initializer, the code
  relulab's kernels switch on, whether it learns weights of its own);
- `init`: `INITIALIZERS`, Keras' initializers by name;
- `models`: `MODELS`, name -> `ModelEntry` (the builder, how the model packs with others, whether it is
  convolutional), and `ModelSpec`, the record a run names its model with;
- `optim`: optimizers by name in PyTorch's and Keras' flavours, Keras-style weight penalties, and
  `StackedOptimizer`, the same rules for stacked weights.

The zoo imports only `relulab.core`.
"""
from relulab.zoo.activations import ACTIVATIONS, Activation, get_activation
from relulab.zoo.init import INITIALIZERS, init_layer
from relulab.zoo.models import MODELS, ModelEntry, ModelSpec, SlotNet, build_model
from relulab.zoo.optim import OptimizerSpec, StackedOptimizer, build_optimizer

__all__ = ["ACTIVATIONS", "Activation", "INITIALIZERS", "MODELS", "ModelEntry", "ModelSpec", "OptimizerSpec", "SlotNet",
           "StackedOptimizer", "build_model", "build_optimizer", "get_activation", "init_layer"]
