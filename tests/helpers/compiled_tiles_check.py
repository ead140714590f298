"""Run twice by tests/kernels/test_triton_interpreter.py with TRITON_INTERPRET=1 and one Inductor cache folder: a stack of
seed-cnns through relulab's Triton operators, its training forward compiled, with the forward kernel's rows a tile
set to argv[1]. The second run, under other tile sizes, must not take the first's compiled graph (whose partial
sums had another shape) from the cache. Prints the loss."""
import sys

import torch

from relulab.kernels import conv_triton
from relulab.packing import stacked_cnn
from relulab.packing.stacked_cnn import StackedCNN
from relulab.zoo.models import ModelSpec, build_model

rows = int(sys.argv[1])
chosen = conv_triton.config
conv_triton.config = lambda kernel, *args, **kw: {**chosen(kernel, *args, **kw), **({"BLOCK_M": rows} if kernel == "fwd" else {})}
stacked_cnn.KERNEL_DTYPE = torch.float32  # the interpreter computes bf16 products wrongly
torch.manual_seed(0)
stack = StackedCNN([build_model(ModelSpec("seed-cnn", widths=[16] * 9), (3, 32, 32), 10) for _ in range(2)],
                   triton_kernels=True, fold_batchnorm=True)
x = torch.randn(2, 2, 3, 32, 32)
with torch.no_grad():
    print(f"loss {float(torch.compile(lambda p: stack.forward(p, x, True).square().sum())(stack.params)):.4f}")
