"""relulab's Triton kernels, run on the CPU by Triton's interpreter, against their PyTorch references:
the fused MLP step (`relulab.fused_triton`) and the stacked convolutions (`relulab.conv_triton`).

(On the GPU, `benchmarks/bench_speed.py --parts check` compares the compiled kernels the same way.)
The interpreter is chosen when triton is imported, so each comparison runs in a process of its own."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")


def _run_in_interpreter(script: str) -> str:
    """Run tests/`script` with TRITON_INTERPRET=1; its stdout, after checking it exited 0."""
    proc = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "helpers" / script)],
                          env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc.stdout


def test_the_fused_mlp_kernels_equal_the_reference():
    assert "largest difference" in _run_in_interpreter("fused_triton_check.py")


def test_the_convolution_kernels_equal_pytorch():
    # 2 + 3 + 2 models: 3 products each, then activation, sums, and their backward's two outputs; then
    # a narrow input's forward and weight gradient for 2 models
    assert _run_in_interpreter("conv_triton_check.py").count("relative error") == 53


def test_a_stack_through_the_triton_operators_equals_pytorch():
    # Batch norms folded into the convolutions, through the custom operators: logits, gradient, statistics.
    assert _run_in_interpreter("stacked_cnn_check.py").count("relative error") == 3
