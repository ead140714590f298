"""relulab.kernels.launches: kernel launches noted instead of made while recording, and the distinct kernels of
what was noted compiled once each (a fake kernel stands in for a triton.JITFunction: this machine has no GPU)."""
import pytest
import torch

from relulab.kernels import launches


class FakeKernel:
    """Records launches (`kernel[grid](...)`) and compiles (`kernel.warmup(...)`) as a JITFunction takes them."""

    do_not_specialize = ["NB"]
    arg_names = ["x_ptr", "NB", "C"]

    def __init__(self):
        self.launched, self.compiled = [], []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launched.append((grid, args, kwargs))

    def warmup(self, *args, grid, **kwargs):
        self.compiled.append((args[1:], kwargs))


def test_a_launch_is_made_outside_recording_and_noted_inside():
    kernel, x = FakeKernel(), torch.zeros(4)
    launches.launch(kernel, (2, 1), x, 128, 16, BLOCK=32)
    assert kernel.launched == [((2, 1), (x, 128, 16), {"BLOCK": 32})]
    with launches.recording() as noted:
        launches.launch(kernel, (2, 1), x, 128, 16, BLOCK=32)
        with pytest.raises(RuntimeError, match="already being recorded"):
            with launches.recording():
                pass
    assert len(kernel.launched) == 1 and len(noted) == 1 and noted[0].kwargs == {"BLOCK": 32}
    launches.launch(kernel, (2, 1), x, 128, 16)  # recording is over: launched again
    assert len(kernel.launched) == 2


def test_each_distinct_kernel_compiles_once_whatever_the_batch_size():
    kernel, x = FakeKernel(), torch.zeros(4)
    with launches.recording() as noted:
        launches.launch(kernel, (2,), x, 128, 16, BLOCK=32)
        launches.launch(kernel, (9,), x, 2048, 16, BLOCK=32)  # another batch (NB is not specialized on)
        launches.launch(kernel, (2,), x, 128, 48, BLOCK=32)  # another channel count: another kernel
        launches.launch(kernel, (2,), x.double(), 128, 16, BLOCK=32)  # another dtype: another kernel
        launches.launch(kernel, (2,), x, 128, 16, BLOCK=64)  # another tile: another kernel
    done = launches.compile_all(noted, threads=3)
    assert (done.kernels, done.threads) == (4, 3) and len(kernel.compiled) == 4
    assert not kernel.launched  # compiled, never run
    assert launches.compile_all(noted, threads=0).kernels == 4 and len(kernel.compiled) == 4  # 0: none ahead
    assert launches.compile_all(noted, threads=3).kernels == 4 and len(kernel.compiled) == 4  # compiled already
    assert launches.compile_all(noted, threads=3, device="cuda:1").kernels == 4 and len(kernel.compiled) == 8


def test_compile_threads_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("RELULAB_COMPILE_THREADS", "1")
    assert launches.compile_threads() == 1
    monkeypatch.setenv("RELULAB_COMPILE_THREADS", "many")  # not a number: the default
    assert 1 <= launches.compile_threads() <= 16


def test_tritons_cache_key_is_hashed_once_on_a_thread_of_its_own():
    launches.hash_triton_ahead()
    first = launches._hashing
    launches.hash_triton_ahead()
    assert launches._hashing is first and first.daemon
    first.join(timeout=60)
    assert not first.is_alive()


class StagedKernel(FakeKernel):
    """A kernel whose buffers fit the GPU's shared memory at up to `fits` pipeline stages: more, and its launch
    fails as Triton's does when it loads such a kernel."""

    def __init__(self, fits: int):
        super().__init__()
        self.fits = fits

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            if kwargs.get("num_stages", 1) > self.fits:
                from triton.runtime.errors import OutOfResources

                raise OutOfResources(237580, 232448, "shared memory")
            self.launched.append((grid, args, kwargs))
        return run


def test_stages_the_gpu_holds_are_launched_as_asked():
    pytest.importorskip("triton")
    kernel, x = StagedKernel(fits=3), torch.zeros(4)
    launches.launch(kernel, (2,), x, 128, 16, BLOCK=32, num_stages=3)
    assert [kwargs["num_stages"] for _, _, kwargs in kernel.launched] == [3]


def test_stages_the_gpu_cannot_hold_run_on_one_stage_from_the_first_launch_on():
    pytest.importorskip("triton")
    kernel, x = StagedKernel(fits=1), torch.zeros(4)
    launches.launch(kernel, (2,), x, 128, 16, BLOCK=64, num_stages=3)
    assert kernel.launched == [((2,), (x, 128, 16), {"BLOCK": 64, "num_stages": 1})]
    kernel.fits = 3  # the stand-in changes its mind; a GPU does not: one stage is remembered, not tried again
    launches.launch(kernel, (2,), x, 128, 16, BLOCK=64, num_stages=3)
    launches.launch(kernel, (9,), x, 2048, 16, BLOCK=64, num_stages=3)  # another batch: the same kernel
    assert [kwargs["num_stages"] for _, _, kwargs in kernel.launched] == [1, 1, 1]
    launches.launch(kernel, (2,), x, 128, 16, BLOCK=128, num_stages=3)  # another tile: tried as asked
    assert [kwargs["num_stages"] for _, _, kwargs in kernel.launched] == [1, 1, 1, 3]


def test_a_kernel_one_stage_does_not_fit_either_fails_with_tritons_error():
    pytest.importorskip("triton")
    with pytest.raises(Exception, match="out of resource: shared memory"):
        launches.launch(StagedKernel(fits=0), (2,), torch.zeros(4), 128, 16, BLOCK=64, num_stages=3)


def test_other_errors_of_a_staged_launch_are_not_taken_for_shared_memory():
    pytest.importorskip("triton")

    class Broken(FakeKernel):
        def __getitem__(self, grid):
            def run(*args, **kwargs):
                raise ValueError("a real bug")
            return run

    with pytest.raises(ValueError, match="a real bug"):
        launches.launch(Broken(), (2,), torch.zeros(4), 128, 16, num_stages=3)
