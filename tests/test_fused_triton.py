"""The fused MLP step's Triton kernels, run on the CPU by Triton's interpreter, equal the PyTorch reference.

(On the GPU, `benchmarks/bench_speed.py --parts kernels` compares the compiled kernels the same way.)
The interpreter is chosen when triton is imported, so the comparison runs in a process of its own."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")


def test_the_triton_kernels_equal_the_reference_in_the_interpreter():
    script = Path(__file__).with_name("fused_triton_check.py")
    proc = subprocess.run([sys.executable, str(script)], env={**os.environ, "TRITON_INTERPRET": "1"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "largest difference" in proc.stdout
