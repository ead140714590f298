"""relulab: fast, honest, reproducible experiments on activation functions (PyTorch).

The pieces, one module per concept: `activations`, `init`, `optim`, `data`, `models`,
`train`, and the `relulab` command in `cli`.

`relulab.slotify(model, example_input)` makes the activations of any nn.Module relulab slots, and
`relulab.describe` reports them (relulab.zoo.slotify).
"""
__version__ = "0.1.0"

from relulab.zoo.slotify import describe, slotify  # noqa: E402  (the Python API's entry points)

__all__ = ["describe", "slotify"]
