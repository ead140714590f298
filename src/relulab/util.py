"""Small helpers shared by the CLI, the store, the reports and checkpoints: atomic file writes, and what memory
this machine has left (checked before a big allocation, so a size that cannot fit is an error, not a crash)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import UserError


def write_bytes_atomic(path: str | Path, blob: bytes) -> Path:
    """Write `blob` to `path` through a temp file in the same folder and a rename: readers (and a
    killed process) never leave or see half a file. The file gets the usual mode (0666 less the
    umask), not the temp file's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


# ---------------------------------------------------------------- memory


def memory_available() -> int | None:
    """Bytes this process can still get: Linux's MemAvailable, capped by the cgroup's limit (a container);
    elsewhere the machine's physical memory; None where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            found.append(int(limit))
    except OSError:
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return min(found)


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; the binary units memory is sold in."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def check_fits(nbytes: int, field: str, what: str) -> None:
    """Refuse, before allocating anything, what could never fit in this machine's memory:
    `UserError("<field>: <what> would need 2.9 PiB of memory; this machine has 22.1 GiB available")`."""
    available = memory_available()
    if available is not None and nbytes > available:
        raise UserError(f"{field}: {what} would need {human_bytes(nbytes)} of memory; this machine has "
                        f"{human_bytes(available)} available")
