"""Where a run happens: device choice, seeding, and the provenance stored with every result."""
from __future__ import annotations

import hashlib
import os
import platform
import random
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from relulab.core.version import __version__
from relulab.core.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when there is one; 'cpu', 'cuda', 'cuda:1' are taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device: {name} asked for, but this machine has no CUDA device (use cpu or auto)")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}")
    return device


@contextmanager
def matmul_precision(products: str):
    """Inside, PyTorch computes float32 matrix products as `products` says: "ieee" (full fp32, PyTorch's
    default) or "tf32" (TensorFloat-32 tensor cores on A100/H100: inputs rounded to 10 mantissa bits)."""
    saved = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = products
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = saved


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices), so a run on the CPU repeats exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model() or platform.processor() or platform.machine() or "cpu"


def _cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), with its core count."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return ""


@lru_cache(maxsize=1)
def code_version() -> str:
    """relulab's version plus a hash of its source files: two results with the same value ran the same code."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parents[1].rglob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def provenance(device: torch.device) -> dict:
    """What is stored beside every result, to tell later whether two results are comparable."""
    return {"relulab": code_version(), "torch": torch.__version__, "python": platform.python_version(),
            "device": device_name(device), "host": platform.node()}
