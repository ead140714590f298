"""Run by tests/kernels/test_triton_interpreter.py with TRITON_INTERPRET=1: the fused step's Triton kernels, executed by
Triton's interpreter on the CPU, against the PyTorch reference path. Exits non-zero on a mismatch."""
import sys
import types

import numpy as np
import torch
import triton.language as tl
from triton.runtime.interpreter import TensorHandle

from relulab.packing import fused
from relulab.kernels import activation_code
from relulab.zoo.models import ModelSpec, build_model
from relulab.packing.stacked_mlp import StackedMLP


def _tanh(z):
    return tl.core.tensor(TensorHandle(np.tanh(z.handle.data), z.handle.dtype), z.type)


# The interpreter runs kernels as Python on numpy arrays but has no libdevice; tanh is its only use here.
activation_code.libdevice = types.SimpleNamespace(tanh=_tanh)


def largest_difference(models, features: int, precisions=("ieee", "tf32"), runs: int = 0) -> float:
    """Through the Triton kernels (in the interpreter) and through the PyTorch reference: the largest difference
    in loss, logits and gradient, over both kernel configurations and a full and a short batch."""
    cpu = torch.device("cpu")
    stack = StackedMLP(models)
    linear = stack.linear_layers()
    params = stack.params.detach()
    worst = 0.0
    # Both kernel configurations (their block shapes differ); the interpreter computes either in fp32.
    for precision in precisions:
        for batch in (32, 7):  # a full batch and an epoch's short last one
            x, y = torch.rand(len(models), batch, features), torch.randint(0, 5, (len(models), batch))
            found = []
            for use_triton in (True, False):
                grad = torch.full_like(params, float("nan"))  # every entry must be written
                step = fused.FusedMLP(models, stack.sizes, linear, cpu, use_triton,
                                      precision if use_triton else "ieee")
                if use_triton and precision == "tf32":
                    assert len(step.runs) == runs, step.runs  # the run kernels are what is checked
                found.append(step.gradient(params, x, y, grad))
            for a, b in zip(*found):
                assert torch.isfinite(a).all()
                worst = max(worst, (a - b).abs().max().item())
    return worst


def main() -> int:
    torch.manual_seed(0)
    activations = ("identity", "relu", "sigmoid", "tanh")
    # Widths that are not multiples of any block, and all four activations in one stack; one square layer, no run.
    worst = largest_difference([build_model(ModelSpec("deep-mlp", activation=a, widths=[40, 20, 20]), (70,), 5)
                                for a in activations], 70)
    # A run of three square layers after the first, through the run kernels (tf32 only), activations mixed per layer.
    mixed = [build_model(ModelSpec("deep-mlp", activation=a, widths=[40, 20, 20, 20, 20],
                                   slots={2: activations[(i + 1) % 4]}), (70,), 5) for i, a in enumerate(activations)]
    worst = max(worst, largest_difference(mixed, 70, ("tf32",), runs=1))
    # A run from the very first layer: its input is the data, whose gradient is not wanted.
    first = [build_model(ModelSpec("deep-mlp", activation=a, widths=[20, 20]), (20,), 5) for a in activations]
    worst = max(worst, largest_difference(first, 20, ("tf32",), runs=1))
    print(f"largest difference {worst:.2e}")
    return 0 if worst < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
