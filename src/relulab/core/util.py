"""Small helpers shared by the CLI, the store, the reports and checkpoints: output locations checked before
the work, atomic file and folder writes, and what memory this machine has left (checked before a big
allocation, so a size that cannot fit is an error, not a crash)."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from relulab.core.errors import UserError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # safe in file names, tables and URLs


def check_name(value, field: str) -> str:
    """`value` if it is a name relulab keeps (an experiment's, a part's, a configuration's), else a UserError."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise UserError(f"{field}: expected a name of letters, digits and . _ + - (starting with a letter or digit),"
                        f" got {value!r}")
    return value

# ---------------------------------------------------------------- output locations, checked before any work
#
# A command that trains for an hour and then finds it cannot write its report has wasted the hour, so every
# output is checked first: that it is (or can become) the right kind of thing, and that its folder takes a file.


def check_output_file(path: str | Path, field: str) -> Path:
    """`path` can be written as a file: not a folder, and its folder exists or can be made, and takes files."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise UserError(f"{field}: {path} is a folder; expected a file name")
    _check_can_create(path.parent, field, path)
    return path


def check_output_dir(path: str | Path, field: str) -> Path:
    """`path` can hold files: a folder, or a name a folder can be made at."""
    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise UserError(f"{field}: {path} is a file; expected a folder")
    _check_can_create(path, field, path)
    return path


def _check_can_create(folder: Path, field: str, target: Path) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{field}: cannot create {target}: {existing} is a file, not a folder")
    # Permission bits say little (root ignores them; a read-only mount does not show in them): try it.
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".relulab-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{field}: cannot write in {existing} ({e.strerror or e})") from None


def _write_error(path: Path, error: OSError) -> UserError:
    full = error.errno in (errno.ENOSPC, errno.EDQUOT)
    why = "the disk is full" if full else (error.strerror or str(error))
    return UserError(f"{path}: could not write it: {why}")


def write_bytes_atomic(path: str | Path, blob: bytes) -> Path:
    """Write `blob` to `path` through a temp file in the same folder and a rename: readers (and a
    killed process) never leave or see half a file. The file gets the usual mode (0666 less the
    umask), not the temp file's private 0600."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # a full disk, a vanished folder: one line, and no half file left behind
            raise _write_error(path, e) from None
        raise
    return path


def write_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


@contextmanager
def staged_folder(target: str | Path) -> Iterator[Path]:
    """Write a folder's files into a hidden sibling, then put it in `target`'s place whole: a reader (or a kill,
    or a full disk) never sees a folder of half old, half new files. The caller checks beforehand that `target`
    is a folder it may replace; on an error the staging folder is removed and `target` is left as it was."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    except OSError as e:
        raise _write_error(target, e) from None
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; the folder gets the usual mode
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_in(staging: Path, target: Path) -> None:
    """Two renames: the old folder aside, the new one in; then the old one is deleted."""
    if not target.exists():
        os.rename(staging, target)
        return
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    os.rename(target, old / target.name)
    try:
        os.rename(staging, target)
    except OSError:
        os.rename(old / target.name, target)  # put the old one back: never leave no folder at all
        raise
    shutil.rmtree(old, ignore_errors=True)


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
    """1536 -> '1.5 KiB'; the binary units memory is sold in. Sizes computed from user input can be any
    integer, beyond what a float holds: those are written as a power of ten."""
    if isinstance(n, int) and n.bit_length() > 1000:
        return f"about 10^{len(str(n)) - 1} B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}" if n < 1e6 else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


def check_fits(nbytes: int, field: str, what: str) -> None:
    """Refuse, before allocating anything, what could never fit in this machine's memory:
    `UserError("<field>: <what> would need 2.9 PiB of memory; this machine has 22.1 GiB available")`."""
    available = memory_available()
    if available is not None and nbytes > available:
        raise UserError(f"{field}: {what} would need {human_bytes(nbytes)} of memory; this machine has "
                        f"{human_bytes(available)} available")
