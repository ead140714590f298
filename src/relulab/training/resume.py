"""Training in progress, saved at epoch boundaries, so a killed run or pack goes on from its last save.

A sweep commits a run only when it has finished, so without this a kill loses every epoch of the runs in
progress: for a pack of 16 seed-cnns at 50 epochs, minutes of GPU time. With a `Resume` (a folder and a
period), `train.train_model` and `pack.train_together` write their whole state (weights, optimizer state,
the learning-rate schedule's step, batch norm statistics, each run's random generator, the histories so far,
the best-epoch weights) after an epoch whenever `every_s` seconds have passed since the last write, and read
it back when they start the same work again: the same run keys, so the same runs. What they then compute is
what they would have computed without the kill (on the CPU to the bit; a test checks it).

The file of a piece of work is named by a hash of its run keys, written atomically (a kill mid-write leaves
the previous one), read with `torch.load(weights_only=True)`, and deleted when the work finishes. A file
whose runs another process finished, or that nothing will read again, is removed by `discard_finished`.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch

from relulab.core.errors import UserError
from relulab.core.util import write_bytes_atomic

FORMAT = "relulab-training-state"
VERSION = 2  # 2: a stacked MLP's rows are padded to 64 bytes (relulab.packing.stacked_mlp.ROW_MULTIPLE)


@dataclass(frozen=True)
class Resume:
    """Where training in progress is saved, and how often (plain data: it travels in executor tasks)."""

    folder: str
    every_s: float = 60.0  # seconds between saves; 0: after every epoch

    def saver(self, keys: Iterable[str]) -> Optional["Saver"]:
        """The saver of the work on these run keys; None when a run has no key (nothing to resume it by)."""
        keys = sorted(keys)
        if not keys or not all(keys):
            return None
        return Saver(Path(self.folder), keys, self.every_s)


class Saver:
    """Saves and loads one piece of work's state: a single run, or a pack."""

    def __init__(self, folder: Path, keys: list[str], every_s: float):
        self.keys, self.every_s = keys, every_s
        digest = hashlib.sha256("\0".join(keys).encode()).hexdigest()[:24]
        self.path = folder / f"{digest}.pt"
        self._last = time.monotonic()
        self._failed = False

    def load(self) -> Optional[dict]:
        """The saved state of this work, or None (none saved, or a file that is not one: then it is ignored)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError):
            return None  # damaged: the work starts again from its beginning, which is always right
        if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("version") != VERSION \
                or state.get("keys") != self.keys:
            return None
        runs = f"{len(self.keys)} runs go" if len(self.keys) > 1 else "a run goes"
        print(f"relulab: {runs} on from epoch {state['epoch']}, saved {time.ctime(self.path.stat().st_mtime)}",
              file=sys.stderr, flush=True)
        return state

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_s

    def save(self, epoch: int, state: dict) -> None:
        """Write the state after `epoch`. A save that fails (a full disk, a Ray worker on a machine without the
        store's folder) is said once and given up: it only costs what a kill would then lose."""
        if self._failed:
            return
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, "version": VERSION, "keys": self.keys, "epoch": epoch, **state}, buffer)
        try:
            write_bytes_atomic(self.path, buffer.getvalue())
        except UserError as e:
            print(f"relulab: warning: cannot save training in progress ({e}); it goes on unsaved", file=sys.stderr)
            self._failed = True
        self._last = time.monotonic()

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def to_cpu(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of `tensors` on the CPU, each with storage of its own, in one device-to-host copy per dtype and device:
    a copy per tensor waits on the GPU once per tensor (100 times for seed 001's model)."""
    tensors = list(tensors)
    groups: dict[tuple, list[int]] = {}
    for i, tensor in enumerate(tensors):
        groups.setdefault((tensor.dtype, tensor.device), []).append(i)
    copies: dict[int, torch.Tensor] = {}
    for indices in groups.values():
        flat = torch.cat([tensors[i].detach().reshape(-1) for i in indices]).cpu()  # on the CPU already: itself
        for i, piece in zip(indices, flat.split([tensors[i].numel() for i in indices])):
            copies[i] = piece.view_as(tensors[i]).clone()
    return [copies[i] for i in range(len(tensors))]


def fits(targets: Iterable[torch.Tensor], saved: Iterable[torch.Tensor]) -> bool:
    """Whether saved tensors have the number and shapes of the tensors they would be copied into."""
    targets, saved = list(targets), list(saved)
    return len(targets) == len(saved) and all(t.shape == s.shape for t, s in zip(targets, saved))


def say_it_does_not_fit(several: bool) -> None:
    """The line for a loaded state that `fits` rejects (one saved by a relulab that laid the models out otherwise):
    the work it was found for starts from its beginning, which is always right."""
    whose = "these models' layout; they start" if several else "this model's layout; it starts"
    print(f"relulab: that saved state does not fit {whose} from epoch 0", file=sys.stderr, flush=True)


@torch.no_grad()
def copy_into(targets: Iterable[torch.Tensor], saved: Iterable[torch.Tensor]) -> None:
    """Put saved values back into the tensors a step changes in place (a CUDA graph keeps their addresses)."""
    targets, saved = list(targets), list(saved)
    if not fits(targets, saved):
        raise ValueError("a saved training state that does not fit the work it was found for")
    for target, value in zip(targets, saved):
        target.copy_(value)


def discard_finished(folder: Path, done: "callable") -> int:
    """Remove the saved states whose runs are all finished (`done(keys)` -> the finished ones); how many."""
    removed = 0
    for path in sorted(folder.glob("*.pt")) if folder.is_dir() else ():
        try:
            keys = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("keys") or []
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError):
            keys = []  # unreadable: nothing can resume from it
        if not keys or set(done(keys)) >= set(keys):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
