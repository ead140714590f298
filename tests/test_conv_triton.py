"""relulab.conv_triton's kernels against PyTorch's convolution, in Triton's CPU interpreter (no GPU needed).

The interpreter is chosen when triton is imported, so the comparison runs in a process of its own."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")


def test_the_convolution_kernels_equal_pytorch_in_the_interpreter():
    script = Path(__file__).with_name("conv_triton_check.py")
    proc = subprocess.run([sys.executable, str(script)], env={**os.environ, "TRITON_INTERPRET": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("relative error") == 15  # 2 + 3 models, 3 products each
