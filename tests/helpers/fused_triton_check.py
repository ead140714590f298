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


def main() -> int:
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    # Widths that are not multiples of any block, and all four activations in one stack.
    models = [build_model(ModelSpec("deep-mlp", activation=a, widths=[40, 20, 20]), (70,), 5)
              for a in ("identity", "relu", "sigmoid", "tanh")]
    stack = StackedMLP(models)
    linear = [(op.weight, op.bias, op.shape) for op in stack.ops if op.kind == "linear"]
    params = stack.params.detach()
    worst = 0.0
    # Both kernel configurations (their block shapes differ); the interpreter computes either in fp32.
    for precision in ("ieee", "tf32"):
        for batch in (32, 7):  # a full batch and an epoch's short last one
            x, y = torch.rand(len(models), batch, 70), torch.randint(0, 5, (len(models), batch))
            found = []
            for use_triton in (True, False):
                grad = torch.full_like(params, float("nan"))  # every entry must be written
                loss, logits = fused.FusedMLP(models, stack.sizes, linear, cpu, use_triton,
                                              precision if use_triton else "ieee").gradient(params, x, y, grad)
                found.append((loss, logits, grad))
            for a, b in zip(*found):
                assert torch.isfinite(a).all()
                worst = max(worst, (a - b).abs().max().item())
    print(f"largest difference {worst:.2e}")
    return 0 if worst < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
