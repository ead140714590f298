"""Where dataset files are looked for, and how missing ones are fetched.

An explicit path (`data.path`, `--data-path`) is the only place looked at: a path that does not hold the files is
an error, never a quiet fall back to another copy. Without one, the search order for a dataset called NAME is
`$RELULAB_DATA/NAME` (and `$RELULAB_DATA` itself), the user cache dir
(`$RELULAB_CACHE`, else `$XDG_CACHE_HOME/relulab`, else `~/.cache/relulab`) /NAME,
then `/usr/share/datasets/NAME` (Debian's `dataset-fashion-mnist` puts its files
there). When none holds the files and the network is up, they are downloaded from
their canonical source into the cache dir, with a checksum and a progress bar;
`RELULAB_OFFLINE=1` (or `download=False`) forbids that.
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from relulab.core.errors import UserError


@dataclass(frozen=True)
class RemoteFile:
    url: str
    md5: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

# Canonical sources and their published MD5 checksums (the ones torchvision checks).
REMOTE: dict[str, list[RemoteFile]] = {
    "fashion-mnist": [RemoteFile(_FASHION + n, h) for n, h in zip(IDX_FILES, (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
        "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"))],
    "mnist": [RemoteFile(_MNIST + n, h) for n, h in zip(IDX_FILES, (
        "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"))],
    "cifar10": [RemoteFile("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                           "c58f30108f718f92721af3b95e74349a")],
}

HOW_TO_GET = {
    "fashion-mnist": "on Debian/Ubuntu: apt-get install dataset-fashion-mnist; or put the four IDX .gz files from "
                     + _FASHION + " in one of those folders",
    "mnist": "put the four IDX .gz files (train-images-idx3-ubyte.gz, ...) from " + _MNIST
             + " in one of those folders, or pass --data-path",
    "cifar10": "put cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz) or an image"
               " folder archive such as cifar10-jpeg.tar.gz in one of those folders, or pass --data-path",
}


def cache_dir() -> Path:
    if os.environ.get("RELULAB_CACHE"):
        return Path(os.environ["RELULAB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "relulab"


def given_path(explicit: str | Path) -> Path:
    """The user's data.path, resolved; refused by name where nothing is there."""
    path = Path(explicit).expanduser().resolve()
    if not path.exists():
        raise UserError(f"data.path: {path} does not exist")
    return path


def search_dirs(name: str, explicit: Optional[str | Path] = None) -> list[Path]:
    """The folders (or files) looked at for dataset `name`, in order: the explicit path alone, where one is given."""
    if explicit:
        return [given_path(explicit)]
    dirs: list[Path] = []
    if os.environ.get("RELULAB_DATA"):
        root = Path(os.environ["RELULAB_DATA"]).expanduser()
        dirs += [root / name, root]
    dirs += [cache_dir() / name, Path("/usr/share/datasets") / name]
    return dirs


def offline() -> bool:
    return os.environ.get("RELULAB_OFFLINE", "").lower() in ("1", "true", "yes")


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(remote: RemoteFile, dest: Path) -> None:
    """Download to a temp file beside `dest`, check the MD5, then rename (never a half file)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
    tmp = Path(tmp_name)
    try:
        with urllib.request.urlopen(remote.url, timeout=30) as response, os.fdopen(fd, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                          TransferSpeedColumn(), disable=not sys.stderr.isatty(), transient=True) as bar:
                task = bar.add_task(remote.filename, total=total)
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    bar.advance(task, len(chunk))
        if md5_of(tmp) != remote.md5:
            raise UserError(f"{remote.url}: downloaded file fails its MD5 check (expected {remote.md5})")
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def download(name: str) -> Optional[Path]:
    """Fetch dataset `name` into the cache dir; None when it has no canonical source or the network is down."""
    if name not in REMOTE or offline():
        return None
    target = cache_dir() / name
    try:
        for remote in REMOTE[name]:
            dest = target / remote.filename
            if not dest.exists():
                _fetch(remote, dest)
    except UserError:  # a checksum mismatch is an answer, not a missing network
        raise
    except (OSError, ValueError) as e:  # URLError is an OSError: no network, DNS failure, timeout
        print(f"relulab: could not download {name} ({e})", file=sys.stderr)
        return None
    return target


def not_found(name: str, searched: list[Path]) -> UserError:
    where = ", ".join(str(p) for p in searched)
    how = HOW_TO_GET.get(name, "pass --data-path")
    return UserError(f"dataset {name}: files not found in {where}; {how}")
