"""Run by tests/kernels/test_triton_interpreter.py with TRITON_INTERPRET=1: a stack of seed-cnns through relulab's Triton
operators (relulab.stacked_cnn, batch norm folded into the convolutions), executed by Triton's CPU interpreter in
fp32, against the same stack in PyTorch operations: logits, gradient and running statistics of one step.
Prints one line per comparison and exits 1 if any differs."""
import sys

import torch

from relulab.packing import stacked_cnn
from relulab.zoo.models import ModelSpec, build_model
from relulab.packing.stacked_cnn import StackedCNN

stacked_cnn.KERNEL_DTYPE = torch.float32
torch.manual_seed(0)
# ReLU, identity and sigmoid slots (no tanh: the interpreter lacks libdevice's), both max-pools.
placements = [{}, {2: "identity", 5: "sigmoid", 8: "identity"}]
models = [build_model(ModelSpec("seed-cnn", widths=[16] * 9, slots=p), (3, 32, 32), 10) for p in placements]
x = torch.randn(2, 2, 3, 32, 32)
failed = False
results = {}
for name, kernels in (("triton", True), ("pytorch", False)):
    stack = StackedCNN(models, triton_kernels=kernels, fold_batchnorm=True)
    params = stack.params.detach().clone().requires_grad_(True)
    logits = stack.forward(params, x, True)
    (grad,) = torch.autograd.grad(logits.square().sum(), params)
    results[name] = {"logits": logits.detach(), "gradient": grad,
                     "running statistics": torch.cat([t for pair in stack.running for t in pair])}
for what, want in results["pytorch"].items():
    err = float((results["triton"][what] - want).abs().max() / want.abs().max())
    print(f"{what}: relative error {err:.1e}")
    failed |= not err < 1e-3  # fp32 rounding, through 9 batch norms of a batch of 2
sys.exit(1 if failed else 0)
