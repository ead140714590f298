"""Run by tests/test_triton_interpreter.py with TRITON_INTERPRET=1: relulab.conv_triton's kernels, executed by Triton's
CPU interpreter in fp32, against PyTorch's own convolution and its gradients, for a stack of models in the
(N, H, W, K, C) layout. Prints one line per comparison and exits 1 if any differs."""
import sys

import torch
import torch.nn.functional as F

from relulab import conv_triton

torch.manual_seed(0)
failed = False
# (models, batch, size, CIN, COUT, tiles): odd sizes and channel counts that leave partial tiles in every axis.
CASES = [
    (2, 2, 7, 32, 48, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=16, STAGES=2)),
    (3, 1, 6, 16, 16, dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16, STAGES=2)),
]
for K, N, H, CIN, COUT, tiles in CASES:
    x = torch.randn(N, H, H, K, CIN)
    w = torch.randn(K, COUT, 3, 3, CIN)
    b = torch.randn(K, COUT)
    dy = torch.randn(N, H - 2, H - 2, K, COUT)
    got_y = conv_triton.conv_forward(x, w, b, tiles)
    got_dx = conv_triton.conv_dgrad(dy, w, H, H, tiles)
    got_dw = conv_triton.conv_wgrad(x, dy, 3, {**tiles, "BLOCK_M": 16, "SPLIT": 3})
    for k in range(K):
        xk = x[:, :, :, k].permute(0, 3, 1, 2)
        wk = w[k].permute(0, 3, 1, 2)
        dyk = dy[:, :, :, k].permute(0, 3, 1, 2)
        want = {"forward": F.conv2d(xk, wk, b[k]), "dgrad": torch.nn.grad.conv2d_input(xk.shape, wk, dyk),
                "wgrad": torch.nn.grad.conv2d_weight(xk, wk.shape, dyk)}
        got = {"forward": got_y[:, :, :, k].permute(0, 3, 1, 2), "dgrad": got_dx[:, :, :, k].permute(0, 3, 1, 2),
               "wgrad": got_dw[k].permute(0, 3, 1, 2)}
        for name in want:
            err = float((got[name] - want[name]).abs().max() / want[name].abs().max())
            print(f"K={K} CIN={CIN} COUT={COUT} model {k} {name}: relative error {err:.1e}")
            failed |= not err < 1e-5
sys.exit(1 if failed else 0)
