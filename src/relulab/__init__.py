"""relulab: fast, honest, reproducible experiments on activation functions (PyTorch).

The pieces, one module per concept: `activations`, `init`, `optim`, `data`, `models`,
`train`, and the `relulab` command in `cli`.
"""
__version__ = "0.1.0"
