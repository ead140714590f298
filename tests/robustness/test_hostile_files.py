"""Damaged and hostile data files, through the `relulab train` command.

Real files in the real formats (IDX, CIFAR python pickles, image-folder zip and tar.gz)
are written small, then truncated at random points, hit with random byte flips, or built
to attack the loader (pickles that call os.system, archive members that climb out with
`..` or an absolute path, links). A damaged file must be refused with one line that names
it and exit code 2; a flipped byte may also leave a file that still loads, but never a
traceback; a hostile file must never run or write anything.
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import subprocess
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import cifar_batch_bytes, idx_bytes, image_folder_files
from runner import assert_refused, fuzz, run_cli

FUZZ = fuzz(30)
TRAIN = ["train", "-e", "1", "--widths", "8", "--device", "cpu", "--no-download"]


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, blob in files.items():
            zf.writestr(name, blob)
    return buffer.getvalue()


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buffer.getvalue()


def _idx_files(n_train=60, n_test=20) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": np.arange(n_test) % 10}
    return {f"mnist/{stem}.gz": gzip.compress(idx_bytes(a), mtime=0) for stem, a in arrays.items()}


def _cifar_batches() -> dict[str, bytes]:
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    return {f"cifar-10-batches-py/{name}": cifar_batch_bytes(6, i)[0] for i, name in enumerate(names)}


# Each dataset: (its files, the one to damage, the command's data options).
DATASETS = {
    "idx-gz": (_idx_files(), "mnist/train-images-idx3-ubyte.gz", ["--dataset", "mnist", "--data-path", "mnist"]),
    "idx-labels": (_idx_files(), "mnist/t10k-labels-idx1-ubyte.gz", ["--dataset", "mnist", "--data-path", "mnist"]),
    "cifar-tar": ({"cifar-10-python.tar.gz": _tar_gz(_cifar_batches())}, "cifar-10-python.tar.gz",
                  ["--dataset", "cifar10", "--data-path", "cifar-10-python.tar.gz"]),
    "cifar-batch": (_cifar_batches(), "cifar-10-batches-py/data_batch_2",
                    ["--dataset", "cifar10", "--data-path", "cifar-10-batches-py"]),
    "image-zip": ({"imgs.zip": _zip(image_folder_files())}, "imgs.zip",
                  ["--dataset", "image-folder", "--data-path", "imgs.zip"]),
    "image-tar": ({"imgs.tar.gz": _tar_gz(image_folder_files())}, "imgs.tar.gz",
                  ["--dataset", "image-folder", "--data-path", "imgs.tar.gz"]),
}


def _cache_entries() -> set[str]:
    cache = Path(os.environ["RELULAB_CACHE"])
    return {str(p) for p in cache.rglob("*")} if cache.exists() else set()


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_the_undamaged_files_load(dataset):
    files, _, options = DATASETS[dataset]
    code, err, _ = run_cli(TRAIN + options, files=files)
    assert code == 0, err


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@FUZZ
@given(fraction=st.floats(min_value=0.0, max_value=0.999))
def test_a_truncated_file_is_refused_by_name(dataset, fraction):
    files, victim, options = DATASETS[dataset]
    files = dict(files)
    files[victim] = files[victim][:int(len(files[victim]) * fraction)]
    cache_before = _cache_entries()
    code, err, left = run_cli(TRAIN + options, files=files)
    assert_refused(code, err, left, Path(victim).name)
    assert _cache_entries() == cache_before  # nothing decoded and cached from a bad file


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@FUZZ
@given(data=st.data())
def test_flipped_bytes_load_or_are_refused_by_name(dataset, data):
    files, victim, options = DATASETS[dataset]
    files = dict(files)
    blob = bytearray(files[victim])
    # Headers are where parsers go wrong: aim half the flips at the first 64 bytes.
    where = data.draw(st.one_of(st.integers(0, min(63, len(blob) - 1)), st.integers(0, len(blob) - 1)))
    blob[where] ^= data.draw(st.integers(1, 255))
    files[victim] = bytes(blob)
    code, err, left = run_cli(TRAIN + options + ["--out", "r.json"], files=files)
    if code == 0:  # a flip in pixel data, say, still leaves a valid file
        assert left and "Traceback" not in err
    else:
        assert_refused(code, err, left, Path(victim).name)


# ------------------------------------------------------------------ pickles that try to run code

MARKER = Path("/tmp/relulab-robustness-pwned")


class _Call:
    """Pickles as a call of `function(*args)`: what a hostile CIFAR batch does."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


HOSTILE = {
    "os.system": _Call(os.system, f"touch {MARKER}"),
    "eval": _Call(eval, f"open('{MARKER}', 'w')"),
    "exec": _Call(exec, f"open('{MARKER}', 'w')"),
    "subprocess": _Call(subprocess.call, ["touch", str(MARKER)]),
    "open": _Call(open, str(MARKER), "w"),
    "numpy.load": _Call(np.load, str(MARKER)),
    "nested": {b"data": [_Call(os.system, f"touch {MARKER}")], b"labels": []},
}


@pytest.mark.parametrize("attack", sorted(HOSTILE))
@pytest.mark.parametrize("where", ["folder", "tarball"])
def test_a_pickle_that_runs_code_is_refused_and_never_run(attack, where):
    batches = _cifar_batches()
    batches["cifar-10-batches-py/data_batch_4"] = pickle.dumps(HOSTILE[attack], protocol=2)
    files, path = ((batches, "cifar-10-batches-py") if where == "folder"
                   else ({"cifar-10-python.tar.gz": _tar_gz(batches)}, "cifar-10-python.tar.gz"))
    MARKER.unlink(missing_ok=True)
    code, err, left = run_cli(TRAIN + ["--dataset", "cifar10", "--data-path", path], files=files)
    assert_refused(code, err, left, "data_batch_4: refused to unpickle")
    assert not MARKER.exists()


# ------------------------------------------------------------------ archives that climb out

SEGMENT = st.from_regex(r"[a-z0-9_]{1,6}", fullmatch=True)
ESCAPING_NAME = st.one_of(
    st.lists(st.one_of(SEGMENT, st.just("..")), min_size=1, max_size=5).filter(lambda s: ".." in s)
    .map(lambda s: "/".join(s + ["evil.png"])),
    st.lists(SEGMENT, min_size=0, max_size=3).map(lambda s: "/" + "/".join(s + ["evil.png"])),
    st.lists(SEGMENT, min_size=0, max_size=3).map(lambda s: "..\\" + "\\".join(s + ["evil.png"])),
    st.lists(SEGMENT, min_size=0, max_size=3).map(lambda s: "C:/" + "/".join(s + ["evil.png"])),
)


@FUZZ
@given(member=ESCAPING_NAME, kind=st.sampled_from(["zip", "tar.gz"]))
def test_archive_members_outside_the_archive_are_refused(member, kind):
    files = image_folder_files()
    files[member] = next(iter(files.values()))
    archive = f"a.{kind}"
    blob = _zip(files) if kind == "zip" else _tar_gz(files)
    code, err, left = run_cli(TRAIN + ["--dataset", "image-folder", "--data-path", archive], files={archive: blob})
    assert_refused(code, err, left, "refusing the archive")


@pytest.mark.parametrize("link", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_links_in_a_tar_are_refused(link):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, blob in image_folder_files().items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        info = tarfile.TarInfo("train/cat/zz.png")
        info.type, info.linkname = link, "/etc/passwd"
        tar.addfile(info)
    code, err, left = run_cli(TRAIN + ["--dataset", "image-folder", "--data-path", "l.tar.gz"],
                              files={"l.tar.gz": buffer.getvalue()})
    assert_refused(code, err, left, "l.tar.gz")


def test_a_wrong_shape_idx_file_is_refused_by_name():
    files = _idx_files()
    files["mnist/train-images-idx3-ubyte.gz"] = gzip.compress(idx_bytes(np.zeros((60, 28), np.uint8)))
    code, err, left = run_cli(TRAIN + ["--dataset", "mnist", "--data-path", "mnist"], files=files)
    assert_refused(code, err, left, "train-images-idx3-ubyte.gz: IDX file has 2 dimensions; expected 3")


# ------------------------------------------------------------------ decompression bombs


def _bomb_png(width: int, height: int) -> bytes:
    """A real 1-bit PNG of width x height black pixels: tens of kilobytes that would decode to width x height
    bytes. Its rows are compressed a thousand at a time, so making it never holds them all."""
    row = bytes(1 + (width + 7) // 8)  # the filter byte, then the packed bits
    deflate = zlib.compressobj(9)
    body = b"".join(deflate.compress(row * 1000) for _ in range(height // 1000))
    body += deflate.compress(row * (height % 1000)) + deflate.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


# Pillow's default limit is 89,478,485 pixels: it warns above it and raises above twice it. Both are refused.
@pytest.mark.parametrize("width,height", [(14000, 14000), (10000, 10000)])
@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_decompression_bomb_is_refused_by_name(width, height, kind):
    from PIL import Image

    files = image_folder_files()
    files["train/dog/bomb.png"] = _bomb_png(width, height)
    archive = f"b.{kind}"
    blob = _zip(files) if kind == "zip" else _tar_gz(files)
    code, err, left = run_cli(TRAIN + ["--dataset", "image-folder", "--data-path", archive], files={archive: blob})
    assert_refused(code, err, left, f"{archive}:dog/bomb.png: image of {width} x {height} pixels exceeds the "
                                    f"decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels")
