"""relulab's Triton kernels, used only on CUDA (Triton comes with PyTorch's CUDA builds).

- `activation_code`: the activations the kernels apply and their derivatives, switched on the codes of
  `relulab.zoo.activations.KERNEL_CODES`;
- `fused_triton`: one kernel per layer forward and backward for stacks of plain MLPs, and three for a whole run of
  square layers (`relulab.packing.fused`);
- `conv_triton`: implicit-GEMM convolutions for stacks of seed-cnns (`relulab.packing.stacked_cnn`).

This face imports none of them, so that `relulab.kernels` costs nothing where Triton is missing: import the
module you need (`from relulab.kernels import conv_triton`) where you use it.
"""
