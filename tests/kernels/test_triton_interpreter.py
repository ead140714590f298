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


def _run_in_interpreter(script: str, *args: str, env: dict | None = None) -> str:
    """Run tests/helpers/`script` with TRITON_INTERPRET=1; its stdout, after checking it exited 0."""
    proc = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "helpers" / script), *args],
                          env={**os.environ, **(env or {}), "TRITON_INTERPRET": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc.stdout


def test_the_fused_mlp_kernels_equal_the_reference():
    assert "largest difference" in _run_in_interpreter("fused_triton_check.py")


def test_the_convolution_kernels_equal_pytorch():
    # 2 + 3 + 2 models: 3 products each, then activation, sums, and their backward's two outputs; then
    # a narrow input's forward and weight gradient for 2 models; forwards of blocks that straddle taps, 2 x 2
    assert _run_in_interpreter("conv_triton_check.py").count("relative error") == 57


def test_a_stack_through_the_triton_operators_equals_pytorch():
    # Batch norms folded into the convolutions, through the custom operators: logits, gradient, statistics.
    assert _run_in_interpreter("stacked_cnn_check.py").count("relative error") == 3


def test_a_compiled_stack_under_other_tile_sizes_does_not_take_a_stale_graph_from_the_cache(tmp_path):
    # Inductor keeps compiled graphs on disk by their code; the operators' partial sums are as many as the tiles, so
    # the counts are operator arguments (in the code). Derived inside, the second run reused the first's graph and
    # stopped: "expected size 57==29 ... Error in op: torch.ops.relulab.stacked_conv_act".
    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    losses = [_run_in_interpreter("compiled_tiles_check.py", str(rows), env=env) for rows in (64, 32)]
    first, second = (float(out.split()[1]) for out in losses)
    assert second == pytest.approx(first, rel=1e-3)
