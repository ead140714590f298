"""Run by tests/kernels/test_triton_interpreter.py with TRITON_INTERPRET=1: relulab.conv_triton's kernels, executed by Triton's
CPU interpreter in fp32, against PyTorch's own convolution and its gradients, for a stack of models in the
(N, H, W, K, C) layout; and the forward with activation and batch-norm sums and its backward kernel. Prints one line per comparison and exits 1 if any differs."""
import sys

import torch
import torch.nn.functional as F

from relulab.kernels import conv_triton

torch.manual_seed(0)
failed = False


def check(label: str, got: torch.Tensor, want: torch.Tensor) -> None:
    global failed
    err = float((got - want).abs().max() / want.abs().max())
    print(f"{label}: relative error {err:.1e}")
    failed |= not err < 1e-5


# (models, batch, size, CIN, COUT, tiles): odd sizes and channel counts that leave partial tiles in every axis.
# SLABS=3: three slabs of BLOCK_N columns a tile, which cover 48 exactly, 32 with a partial slab, 96 in two tiles.
CASES = [
    (2, 2, 7, 32, 48, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, SLABS=3, STAGES=2)),
    (3, 1, 6, 16, 16, dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16, SLABS=1, STAGES=2)),
    (2, 1, 6, 48, 96, dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16, SLABS=3, STAGES=2)),
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
            check(f"K={K} CIN={CIN} COUT={COUT} model {k} {name}", got[name], want[name])

# The forward with activations and batch-norm sums, and the backward kernel of the activation and the sums,
# against the same steps in PyTorch (autograd through act(conv + b) and the sums of a and a*a).
ACTS = [lambda z: z, torch.relu, torch.sigmoid, torch.tanh]  # relulab.zoo.activations.KERNEL_CODES 0..3
for K, N, H, CIN, COUT, tiles in CASES:
    # Every activation but tanh, which is libdevice's, which the interpreter lacks (the GPU check has it).
    codes = torch.tensor([2, 1] if K == 2 else [0, 1, 2], dtype=torch.int32)
    x = torch.randn(N, H, H, K, CIN)
    w = torch.randn(K, COUT, 3, 3, CIN) / (3 * CIN ** 0.5)
    b = torch.randn(K, COUT)
    got_a, got_sums = conv_triton.conv_forward_with_sums(x, w, b, codes, tiles)
    da = torch.randn_like(got_a)
    dsums = torch.randn(2, K, COUT)
    got_dpre, got_db = conv_triton.activation_backward(da, got_a, dsums, codes, block_m=16)
    for k in range(K):
        pre = F.conv2d(x[:, :, :, k].permute(0, 3, 1, 2), w[k].permute(0, 3, 1, 2), b[k]).requires_grad_(True)
        a = ACTS[int(codes[k])](pre)
        sums = torch.stack([a.sum((0, 2, 3)), (a * a).sum((0, 2, 3))])
        loss = (a * da[:, :, :, k].permute(0, 3, 1, 2)).sum() + (sums * dsums[:, k]).sum()
        (dpre,) = torch.autograd.grad(loss, pre)
        want = {"act": a.detach(), "sums": sums.detach(), "dpre": dpre, "dbias": dpre.sum((0, 2, 3))}
        got = {"act": got_a[:, :, :, k].permute(0, 3, 1, 2), "sums": got_sums[:, k],
               "dpre": got_dpre[:, :, :, k].permute(0, 3, 1, 2), "dbias": got_db[k]}
        for name in want:
            check(f"K={K} CIN={CIN} COUT={COUT} model {k} code {int(codes[k])} {name}", got[name], want[name])

# A narrow input (a first layer's 3 channels, which needs no input gradient): each column of a reduction
# block is its own (tap, channel), and blocks of 16 straddle taps and end past the 27 columns.
K, N, H, COUT = 2, 2, 7, 48
x, w, b = torch.randn(N, H, H, K, 3), torch.randn(K, COUT, 3, 3, 3), torch.randn(K, COUT)
dy = torch.randn(N, H - 2, H - 2, K, COUT)
tiles = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, SLABS=3, STAGES=2)
got_y = conv_triton.conv_forward(x, w, b, tiles)
got_dw = conv_triton.conv_wgrad(x, dy, 3, {**tiles, "BLOCK_M": 32, "SPLIT": 3})
for k in range(K):
    xk, wk = x[:, :, :, k].permute(0, 3, 1, 2), w[k].permute(0, 3, 1, 2)
    check(f"narrow CIN=3 model {k} forward", got_y[:, :, :, k].permute(0, 3, 1, 2), F.conv2d(xk, wk, b[k]))
    want_dw = torch.nn.grad.conv2d_weight(xk, wk.shape, dy[:, :, :, k].permute(0, 3, 1, 2))
    check(f"narrow CIN=3 model {k} wgrad", got_dw[k].permute(0, 3, 1, 2), want_dw)

# Forward blocks wider than a tap's channels (48 channels in blocks of 32, as seed-cnn's c3 runs; 64 for c2): a
# block straddles two taps, and the last of the 432 columns' 14 blocks ends past them.
K, N, H, CIN, COUT = 2, 2, 6, 48, 48
x, w, b = torch.randn(N, H, H, K, CIN), torch.randn(K, COUT, 3, 3, CIN), torch.randn(K, COUT)
for tiles in (dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, SLABS=3, STAGES=2),
              dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, SLABS=1, STAGES=2)):
    got_y = conv_triton.conv_forward(x, w, b, tiles)
    for k in range(K):
        want = F.conv2d(x[:, :, :, k].permute(0, 3, 1, 2), w[k].permute(0, 3, 1, 2), b[k])
        check(f"straddling BLOCK_K={tiles['BLOCK_K']} model {k} forward", got_y[:, :, :, k].permute(0, 3, 1, 2), want)
sys.exit(1 if failed else 0)
