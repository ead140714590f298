"""Work that waits until the GPU is busy, then runs on a thread while the main thread waits on the GPU.

On CUDA a pack's epochs are GPU-bound: the main thread queues captured steps and then waits for the GPU, its CPU
idle for seconds. Work a command will need later and that does not touch the GPU (importing the report's modules:
matplotlib, scipy, jinja2, about a second) can run then at no cost to the command. Whoever knows the work is coming
hands it over (`when_device_busy`; the `run` command hands over the report's imports); whoever keeps the GPU busy
starts it (`device_busy`; `relulab.packing` does after queuing a pack's first steps). Without a busy CUDA device it
never starts, and the work is done where it is first needed, as it would have been.

The thread holds Python's GIL while it runs Python code, and the main thread gets it back only when the thread
yields it, after at most the interpreter's switch interval (5 ms by default): long enough to leave the GPU idle
between two steps. While the thread runs the interval is `SWITCH_INTERVAL_S`: on an H200, importing scipy.special
and matplotlib.figure beside 3,000 replays of seed 001's step (1.06 s on their own) took 1.13-1.24 s in all at
0.1 ms, 1.49-1.71 s at 5 ms, 1.83-2.02 s one after the other (benchmarks/probe_import_overlap.py, BENCHMARKS.md).
"""
from __future__ import annotations

import sys
import threading
from typing import Callable, Optional

import torch

SWITCH_INTERVAL_S = 1e-4

_waiting: list[Callable[[], object]] = []
_thread: Optional[threading.Thread] = None


def when_device_busy(work: Callable[[], object]) -> None:
    """Run `work` on a background thread the next time a CUDA device is kept busy (`device_busy`). It must not use
    the GPU, and nothing may depend on it having run: it is only a head start (a failure in it is ignored)."""
    _waiting.append(work)


def device_busy(device: torch.device) -> None:
    """Say that `device` has work queued that keeps it busy for a while: on CUDA, the work handed to
    `when_device_busy` starts on one thread. Anywhere else nothing happens (on the CPU the training itself wants
    the cores)."""
    global _thread
    if device.type != "cuda" or not _waiting:
        return
    work = list(_waiting)
    _waiting.clear()
    _thread = threading.Thread(target=_run_all, args=(work,), name="relulab-background", daemon=True)
    _thread.start()


def finish() -> None:
    """Wait for the background work started so far, and drop the work that never started."""
    global _thread
    _waiting.clear()
    if _thread is not None:
        _thread.join()
        _thread = None


def _run_all(work: list[Callable[[], object]]) -> None:
    saved = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        for one in work:
            try:
                one()
            except Exception:  # noqa: BLE001 - a head start only: whoever needs the result does the work again
                pass
    finally:
        sys.setswitchinterval(saved)
