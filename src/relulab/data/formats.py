"""Readers for the on-disk dataset formats, each strict about what it accepts.

Every reader returns plain numpy arrays (images uint8 N x C x H x W, labels int64) or
raises UserError naming the file and what was expected. Nothing here executes code
from data: CIFAR pickles go through `SafeUnpickler`, archive members are checked
for path traversal before anything is read.
"""
from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np

from relulab.core.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# ---------------------------------------------------------------- IDX (MNIST family)

_IDX_DTYPES = {0x08: np.uint8}


def open_maybe_gzip(path: Path) -> bytes:
    """The file's bytes, gunzipped when it is a .gz (or starts with the gzip magic)."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)  # checks the trailer's CRC and length: truncation and flipped bits show
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(f"{path}: corrupt or truncated gzip file ({e})") from None
    return raw


def read_idx(path: Path, expect_dims: int) -> np.ndarray:
    """An IDX file (the MNIST format): magic 0x0000 TT DD, DD big-endian uint32 sizes, then data."""
    data = open_maybe_gzip(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise UserError(f"{path}: not an IDX file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code not in _IDX_DTYPES:
        raise UserError(f"{path}: IDX element type 0x{dtype_code:02x} not supported; expected unsigned bytes (0x08)")
    if ndim != expect_dims:
        raise UserError(f"{path}: IDX file has {ndim} dimensions; expected {expect_dims}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise UserError(f"{path}: IDX body has {len(data) - header} bytes; the header {shape} says {expected}"
                        " (truncated or corrupt file)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_pair(images_path: Path, labels_path: Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1).astype(np.int64)
    if len(images) != len(labels):
        raise UserError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
    if labels.size and labels.max() >= num_classes:
        raise UserError(f"{labels_path}: label {labels.max()} out of range; expected 0..{num_classes - 1}")
    return images[:, None, :, :].copy(), labels


# ---------------------------------------------------------------- CIFAR-10 python pickles


class SafeUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds: dicts, lists, bytes, numbers and numpy arrays.

    Any other global (os.system, builtins.eval, ...) is refused, so a hostile pickle
    cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3's protocol 2 spells a bytes literal
    }

    def __init__(self, file, source: str):
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise UserError(f"{self.source}: refused to unpickle '{module}.{name}'; a CIFAR batch holds only"
                            " arrays, lists and bytes")
        if module == "numpy.core.multiarray":  # the name numpy 1 wrote; numpy 2 moved it
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def read_cifar_batch(blob: bytes, source: str, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: {b'data': uint8 (N, 3072), b'labels': [int]} -> (N,3,32,32), (N,)."""
    try:
        batch = SafeUnpickler(io.BytesIO(blob), source).load()
    except UserError:
        raise
    except Exception as e:  # truncated or corrupt pickles raise many different types
        raise UserError(f"{source}: not a readable CIFAR batch ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise UserError(f"{source}: expected a dict with b'data' and b'labels', got {type(batch).__name__}")
    data, labels = batch.get(b"data", batch.get("data")), batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{source}: b'data' must be a uint8 array of shape (N, 3072)")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        raise UserError(f"{source}: b'labels' must be a list of {len(data)} integers")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or (labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        raise UserError(f"{source}: labels must be integers in 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


# ---------------------------------------------------------------- archives


def check_member_name(name: str, archive: Path) -> str:
    """Refuse absolute paths and '..' components (path traversal); return the normalized name."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UserError(f"{archive}: member '{name}' has an absolute path; refusing the archive")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise UserError(f"{archive}: member '{name}' escapes the archive with '..'; refusing the archive")
    return "/".join(p for p in parts if p not in (".", ""))


def iter_archive(path: Path) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) for every regular file of a .zip or .tar(.gz); a name that escapes the archive, or a
    link or device, is refused with a UserError."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                infos = [i for i in zf.infolist() if not i.is_dir()]
                names = [check_member_name(i.filename, path) for i in infos]
                for info, name in zip(infos, names):
                    yield name, zf.read(info)
            return
        # Gunzip the whole stream first: tarfile stops reading at the end-of-archive blocks and would
        # accept a file whose gzip trailer (CRC, length) was cut off or damaged.
        # Members are checked as they come, not all first: walking CIFAR-10's 60,000 headers takes seconds, which
        # the caller's decoding can use, and a bad member still raises before the caller has a dataset (nothing
        # read from an archive is written anywhere until all of it was read).
        with tarfile.open(fileobj=io.BytesIO(open_maybe_gzip(path))) as tf:
            for m in tf:
                name = check_member_name(m.name, path)
                if m.issym() or m.islnk() or m.isdev():
                    raise UserError(f"{path}: member '{m.name}' is a link or device; refusing the archive")
                if m.isfile():
                    yield name, tf.extractfile(m).read()
    except UserError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
        raise UserError(f"{path}: corrupt or truncated archive ({type(e).__name__}: {e}); expected a .zip or .tar.gz")


def is_archive(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith((".zip", ".tar", ".tar.gz", ".tgz"))


# ---------------------------------------------------------------- images

# Decoding them lives in relulab.core.images, so that its worker processes start without importing torch.
