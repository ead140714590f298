"""Shared test set-up: offline, a private cache dir, and writers for small files in the real formats."""
from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _offline_and_private_cache(monkeypatch, tmp_path_factory):
    # Tests never touch the network, and never read or write the user's cache.
    monkeypatch.setenv("RELULAB_OFFLINE", "1")
    monkeypatch.setenv("RELULAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("RELULAB_DATA", raising=False)


@pytest.fixture
def recording_compile(monkeypatch):
    """relulab's torch.compile calls through a backend that records the input shapes of each graph it is
    given and runs the graph as traced: tests check which step is compiled, at which shapes, and that it
    trains the same, without needing a C++ or Triton compiler. Yields the list of traced shape lists."""
    import torch

    from relulab.packing import steps

    traced = []

    def recording_backend(graph, example_inputs):
        traced.append([tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)])
        return graph.forward

    torch._dynamo.reset()
    monkeypatch.setattr(steps, "COMPILE_BACKEND", recording_backend)
    yield traced
    torch._dynamo.reset()  # the graphs traced here must not serve later tests


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: magic 0 0 0x08 ndim, big-endian uint32 dims, uint8 data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_dataset(folder: Path, n_train=60, n_test=20, size=28, gz=True, seed=0) -> dict:
    """The four MNIST-style files with random images and labels 0..9."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }
    for stem, array in arrays.items():
        blob = idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(blob))
        else:
            (folder / stem).write_bytes(blob)
    return arrays


def cifar_batch_bytes(n: int, seed: int) -> tuple[bytes, np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(i % 10) for i in range(n)]
    return pickle.dumps({b"batch_label": b"x", b"data": data, b"labels": labels}, protocol=2), data, labels


def write_cifar_tar(path: Path, n_per_batch=10) -> dict:
    """A cifar-10-python.tar.gz with five tiny training batches and a test batch."""
    contents = {}
    with tarfile.open(path, "w:gz") as tar:
        for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
            blob, data, labels = cifar_batch_bytes(n_per_batch, i)
            contents[name] = (data, labels)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return contents


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array.squeeze()).save(buf, format="PNG")
    return buf.getvalue()


def image_folder_files(classes=("cat", "dog", "frog"), per_class=(6, 3), size=8, channels=3, seed=0) -> dict:
    """{'train/cat/000.png': bytes, ...}: a tiny image-folder dataset."""
    rng = np.random.default_rng(seed)
    files = {}
    for split, count in zip(("train", "test"), per_class):
        for c in classes:
            for i in range(count):
                shape = (size, size, channels) if channels == 3 else (size, size)
                files[f"{split}/{c}/{i:03d}.png"] = png_bytes(rng.integers(0, 256, shape, dtype=np.uint8))
    return files


def write_zip(path: Path, files: dict) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in files.items():
            zf.writestr(name, blob)
    return path


def write_tar_gz(path: Path, files: dict) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path
