"""Launching relulab's Triton kernels, and compiling all the kernels a training step needs at once, before it runs.

Triton compiles a kernel the first time it is launched with a new set of constants: about a second each, one after
another, as a step reaches them. A stack of seed-cnns launches a few dozen distinct kernels (every layer's
forward, input and weight gradients and activation backward, each with its own tile sizes), so on a machine with a
cold cache its first step waited most of a minute (BENCHMARKS.md, "The first run"). Nothing is tuned then: the tile
sizes were chosen ahead of time (`conv_triton.CONFIGS`); the minute is compiling.

So every launch goes through `launch`. Inside `recording()` a launch is noted instead of made; a unit records one
step and one evaluation that way (their outputs are garbage and are thrown away, relulab.packing.units), and
`compile_all` compiles the distinct kernels on a thread pool: Triton's compiler passes and ptxas release the GIL,
so the compiles run side by side (on the H200 machine's 16 cores, 38 kernels in 8-10 s against about 50 s one
after another; Triton's Python front end holds the GIL, hence not 16x). Compiled kernels go to Triton's on-disk
cache (`TRITON_CACHE_DIR`, by default ~/.triton/cache), so later runs on the machine only load them; the step then
finds them compiled in memory.
"""
from __future__ import annotations

import importlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional

# Launches noted while recording; None: launch. A module-level list, not a context variable: autograd runs the
# backward's kernels on its own thread. One process records while it trains nothing else (a unit's set-up).
_recorded: Optional[list["Launch"]] = None


@dataclass
class Launch:
    kernel: Any  # a triton.JITFunction
    grid: tuple
    args: tuple
    kwargs: dict

    def signature(self) -> tuple:
        """What Triton compiles this launch for: its constants, and each argument's type; tensors by dtype and
        16-byte alignment, and the integers Triton does not specialize on (`do_not_specialize`) by nothing at all,
        so that the same kernel at another batch size is compiled once."""
        loose = set(getattr(self.kernel, "do_not_specialize", ()) or ())
        names = getattr(self.kernel, "arg_names", [None] * len(self.args))
        described = tuple("any" if name in loose else _describe(value) for name, value in zip(names, self.args))
        return (self.kernel, described, tuple(sorted((k, _describe(v)) for k, v in self.kwargs.items())))

    def compile(self) -> None:
        self.kernel.warmup(*self.args, grid=self.grid, **self.kwargs)


def _describe(value):
    if hasattr(value, "data_ptr"):
        return (str(value.dtype), value.data_ptr() % 16 == 0)
    return value


# Launches (kernel, signature, device) whose pipeline stages asked for more shared memory than the GPU has: they run
# on one stage. Triton says so at a kernel's first launch (OutOfResources), where the kernel is loaded onto the GPU.
_one_stage: set[tuple] = set()


def launch(kernel, grid, *args, **kwargs) -> None:
    """kernel[grid](*args, **kwargs); inside `recording()`, noted instead. Settings of several pipeline stages
    (`num_stages`) whose buffers the GPU's shared memory cannot hold (an H100 has 227 KB a block, an RTX 4090 99 KB)
    run on one stage, what each kernel ran on before its stages were measured, in this launch and every later one
    of the same kernel, constants and device."""
    if _recorded is not None:
        _recorded.append(Launch(kernel, tuple(grid), args, kwargs))
        return
    if kwargs.get("num_stages", 1) <= 1:
        kernel[grid](*args, **kwargs)
        return
    key = (*Launch(kernel, (), args, kwargs).signature(), next((str(a.device) for a in args if hasattr(a, "device")),
                                                               None))
    if key not in _one_stage:
        try:
            kernel[grid](*args, **kwargs)
            return
        except Exception as error:  # noqa: BLE001 - only Triton's OutOfResources is caught; Triton is imported lazily
            if not _out_of_resources(error):
                raise
            _one_stage.add(key)
    kernel[grid](*args, **{**kwargs, "num_stages": 1})


def one_stage_launches() -> int:
    """How many kernels (by signature and device) run on one stage instead of the stages asked in this process: for a
    benchmark, whose time would otherwise be labelled with settings that did not run."""
    return len(_one_stage)


def _out_of_resources(error: Exception) -> bool:
    from triton.runtime.errors import OutOfResources

    return isinstance(error, OutOfResources)


@contextmanager
def recording() -> Iterator[list[Launch]]:
    """Note the kernels launched inside instead of launching them; the list fills as they are reached."""
    global _recorded
    if _recorded is not None:
        raise RuntimeError("kernel launches are already being recorded")
    _recorded = []
    try:
        yield _recorded
    finally:
        _recorded = None


def compile_threads() -> int:
    """Threads to compile on: $RELULAB_COMPILE_THREADS (1: one after another; 0: none ahead of time, each kernel
    compiles when first launched), else one a CPU core, at most 16."""
    value = os.environ.get("RELULAB_COMPILE_THREADS")
    if value is not None and value.strip().isdigit():
        return int(value)
    return max(1, min(16, os.cpu_count() or 1))


@dataclass
class Compiled:
    kernels: int  # distinct kernels compiled (or found in Triton's caches)
    seconds: float
    threads: int


# (device, signature) of every kernel compile_all compiled, or found in Triton's caches, in this process: Triton keeps
# those in memory, so a later unit of the same kernels (`relulab run` times each packed configuration alone after
# the pack) starts no thread pool for them.
_compiled: set[tuple] = set()


def compile_all(launches: list[Launch], threads: Optional[int] = None, device=None) -> Compiled:
    """Compile the distinct kernels of `launches`, `threads` at a time (default `compile_threads()`), for `device`
    (a CUDA torch.device: Triton compiles for each thread's current device, and a new thread's is the first GPU).
    Kernels this process compiled before for the same device are not compiled again."""
    threads = compile_threads() if threads is None else threads
    unique = {(str(device), launch.signature()): launch for launch in launches}
    todo = [launch for key, launch in unique.items() if key not in _compiled]
    started = time.perf_counter()
    if threads > 0 and todo:
        on_device = (_set_device, (device,)) if getattr(device, "type", None) == "cuda" else (None, ())
        with ThreadPoolExecutor(max_workers=threads, initializer=on_device[0], initargs=on_device[1]) as pool:
            for _ in pool.map(Launch.compile, todo):  # map re-raises a compile's error here
                pass
        _compiled.update(unique)
    return Compiled(len(unique), time.perf_counter() - started, threads)


_hashing: Optional[threading.Thread] = None


def hash_triton_ahead() -> None:
    """Start computing Triton's own cache key (and importing the modules its first kernel load imports) on a thread
    of its own, once per process. Triton hashes its compiler, libtriton among it (415 MB in Triton 3.6: 0.3-0.5 s),
    before its first compile or cache lookup in a process; file reads and hashlib release the GIL, so begun while the
    models are built, it is done by the time `compile_all` needs it. Only a head start: where Triton has no such
    function, nothing happens."""
    global _hashing
    if _hashing is None:
        _hashing = threading.Thread(target=_triton_key, name="relulab-triton-key", daemon=True)
        _hashing.start()


def _triton_key() -> None:
    try:
        from triton.runtime.cache import triton_key  # cached by Triton for the process (functools.lru_cache)

        triton_key()
        # Triton 3.6's first kernel load in a process imports its Gluon modules (0.25-0.3 s on an H200 machine), on
        # the compile threads, which wait on one another's import: imported here, it is done ahead with the key.
        importlib.import_module("triton.experimental.gluon")
    except Exception:  # noqa: BLE001 - another Triton, or none: the first compile computes what it needs
        pass


def _set_device(device) -> None:
    import torch  # only here: the module itself imports nothing heavy

    torch.cuda.set_device(device)


def triton_cache_dir() -> str:
    """Where Triton keeps compiled kernels (for the message that says what a first run paid for)."""
    return os.environ.get("TRITON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".triton", "cache")
