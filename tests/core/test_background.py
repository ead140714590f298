import subprocess
import sys
import threading

import pytest
import torch

from relulab.core import background

CUDA = torch.device("cuda")  # a device object only: nothing here needs a GPU


@pytest.fixture(autouse=True)
def nothing_left_behind():
    yield
    background.finish()


def test_work_waits_for_a_busy_cuda_device_and_runs_on_another_thread():
    seen = []
    background.when_device_busy(lambda: seen.append((threading.current_thread().name, sys.getswitchinterval())))
    background.device_busy(torch.device("cpu"))  # training on the CPU wants the cores: nothing starts
    background.finish()
    assert seen == []

    saved = sys.getswitchinterval()
    background.when_device_busy(lambda: seen.append((threading.current_thread().name, sys.getswitchinterval())))
    background.device_busy(CUDA)
    background.finish()
    assert seen == [("relulab-background", pytest.approx(background.SWITCH_INTERVAL_S))]
    assert sys.getswitchinterval() == saved  # the interpreter's interval is given back


def test_a_failing_piece_of_work_is_only_a_lost_head_start():
    seen = []

    def fails():
        raise ImportError("no such module")

    background.when_device_busy(fails)
    background.when_device_busy(lambda: seen.append("after"))
    background.device_busy(CUDA)
    background.finish()
    assert seen == ["after"]


def test_work_starts_once():
    seen = []
    background.when_device_busy(lambda: seen.append(1))
    background.device_busy(CUDA)
    background.device_busy(CUDA)  # every epoch says so; the work is gone after the first
    background.finish()
    assert seen == [1]


def test_checking_the_report_folder_loads_none_of_the_report(tmp_path):
    # `relulab run` checks its outputs before training; matplotlib and jinja2 must be left for the background thread.
    store, logs = str(tmp_path / "s.sqlite"), str(tmp_path / "tb")
    code = ("import sys; from pathlib import Path; from relulab.cli.run import check_outputs, report_dir; "
            f"check_outputs(Path({store!r}), report_dir(Path({store!r}), 'x', None), Path({logs!r})); "
            "loaded = [m for m in ('relulab.report.build', 'matplotlib', 'jinja2') if m in sys.modules]; "
            "print(loaded); sys.exit(1 if loaded else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
