"""The run kernels' pipeline stages (relulab.kernels.fused_triton.fitting): three where the GPU's shared memory holds
them, one where it does not, so a GPU with less shared memory than an H100 still runs (no GPU here: the device's
shared memory is stood in for)."""
import pytest
import torch

pytest.importorskip("triton")

from relulab.kernels import fused_triton  # noqa: E402

H100_SHARED = 232448  # bytes a block may opt in to on an H100 or H200, as Triton reads it
RTX4090_SHARED = 101376  # 99 KB, sm_89


@pytest.fixture
def shared(monkeypatch):
    def set_to(bytes_: int):
        monkeypatch.setattr(fused_triton, "_max_shared_bytes", lambda index: bytes_)
    return set_to


def test_the_sizes_are_those_triton_compiled_for_sm_90():
    # from Triton 3.6's compile metadata for 16 rows of 128 columns (BENCHMARKS.md, "Run kernels pipelined")
    assert fused_triton.run_shared_bytes(16, 128, 1, backward=False) >= 73728
    assert 139264 <= fused_triton.run_shared_bytes(16, 128, 3, backward=False) <= 139264 + 16
    assert 163848 <= fused_triton.run_shared_bytes(16, 128, 3, backward=True) <= 163848 + 16
    assert fused_triton.run_shared_bytes(16, 128, 4, backward=True) >= 237580  # over an H100's: did not compile


@pytest.mark.parametrize("backward", [False, True])
def test_an_h100_keeps_three_stages_and_a_smaller_gpu_gets_one(shared, backward):
    config = fused_triton.RUN_BACKWARD_CONFIG if backward else fused_triton.RUN_FORWARD_CONFIG
    assert config["num_stages"] == 3
    cuda = torch.device("cuda", 0)
    shared(H100_SHARED)
    assert fused_triton.fitting(config, 128, cuda, backward) == config
    shared(RTX4090_SHARED)
    assert fused_triton.fitting(config, 128, cuda, backward) == {**config, "num_stages": 1}
    assert fused_triton.fitting(config, 128, cuda, backward)["BLOCK_B"] == config["BLOCK_B"]


def test_a_narrow_run_keeps_its_stages_on_a_smaller_gpu(shared):
    # 64 columns: 2 x 16 KB of weights and the rows' staging fit 99 KB
    shared(RTX4090_SHARED)
    config = fused_triton.RUN_BACKWARD_CONFIG
    assert fused_triton.fitting(config, 64, torch.device("cuda", 0), backward=True) == config


def test_off_the_gpu_the_settings_are_left_as_they_are(shared):
    shared(0)  # never asked: the interpreter has no shared memory to fit
    config = fused_triton.RUN_FORWARD_CONFIG
    assert fused_triton.fitting(config, 128, torch.device("cpu"), backward=False) == config
