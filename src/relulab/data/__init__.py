"""Datasets by name, splits, input scaling, and batching on the device.

    splits = load_data(DataSpec("digits"))              # the offline default
    splits = load_data(DataSpec("fashion-mnist", split="first:5000"))   # seed 001
    splits = load_data(DataSpec("cifar10", path="cifar10-jpeg.tar.gz", split="test"))  # seed 000

    splits = Splits.from_datasets(train_dataset, test=test_dataset)   # any map-style Dataset, or (x, y) arrays
    splits = load_data(DataSpec("python", target="my_data.py:datasets"))   # the same, by reference in a spec

A loader returns a `RawDataset` of uint8 N x C x H x W images; `load_data` then
carves out the validation split, resizes or pads, scales, and hands back float32
tensors in a `Splits`. Validation and test are separate by default; `split="test"`
uses the test set as validation (the sources' practice) and sets `val_is_test`,
which every report flags.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import stat
import sys
import zipfile
import zlib
from dataclasses import asdict, dataclass, field, replace
from difflib import get_close_matches
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from relulab.core.errors import UserError, is_number, unknown_choice
from relulab.core.images import decode_images
from relulab.core.ranges import INT64_MAX, show_int
from relulab.core.reference import call_target, check_same_source, load_target, record_source
from relulab.core.util import check_fits, memory_available
from relulab.data import formats, sources
from relulab.data.datasets import StreamedExamples, resident_bytes, streamed_labels, to_tensors

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
DIGIT_CLASSES = [str(i) for i in range(10)]


@dataclass
class RawDataset:
    """What a loader returns: uint8 images (N, C, H, W) and int64 labels, train and test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    source: str
    # Image folders: {"file": the decoded-data cache (None if it could not be written), "hit": read from it}
    cache: Optional[dict] = None


@dataclass
class DataSpec:
    """Which data, how it is split and scaled. A plain record for configs and the CLI."""

    name: str = "digits"
    path: Optional[str] = None  # explicit file or folder; searched first
    split: str = "stratified:0.1"  # first:N | stratified:N | stratified:0.1 | test
    scaling: str = "255"  # 255 (pixels / 255) | standardize (per-channel, from the training split)
    image_size: Optional[int] = None  # resize or pad images to this square size
    fit: str = "resize"  # resize | pad: how image_size is reached
    train_size: Optional[int] = None  # keep a stratified subset of the training split (quick runs)
    split_seed: int = 0  # the split is the same for every run seed
    download: bool = True
    options: dict = field(default_factory=dict)  # loader-specific (synthetic: n, classes, size, channels)
    # name: python (data by reference): the function that returns the datasets, its arguments, and the SHA-256 of
    # its source, which validate() fills in (the run key holds it: edited data code is a new configuration)
    target: Optional[str] = None
    kwargs: dict = field(default_factory=dict)
    source_sha256: Optional[str] = None

    def validate(self, prefix: str = "data") -> "DataSpec":
        if self.name not in LOADERS and self.name not in BY_REFERENCE:
            raise unknown_choice(f"{prefix}.name", self.name, [*LOADERS, *BY_REFERENCE])
        if self.name in BY_REFERENCE:
            _validate_reference(self, prefix)
        else:
            for key in ("target", "source_sha256"):
                if getattr(self, key) is not None:
                    raise UserError(f"{prefix}.{key}: only data by reference (name: python) has a {key}")
            if self.kwargs:
                raise UserError(f"{prefix}.kwargs: only data by reference (name: python) takes kwargs")
        if self.path is not None and self.name in BUILT_IN:
            raise UserError(f"{prefix}.path: {self.name} is built in and reads no files; leave {prefix}.path out")
        parse_split(self.split, f"{prefix}.split")
        if self.scaling not in SCALINGS:
            raise unknown_choice(f"{prefix}.scaling", self.scaling, SCALINGS)
        if self.fit not in ("resize", "pad"):
            raise unknown_choice(f"{prefix}.fit", self.fit, ["resize", "pad"])
        for key in ("image_size", "train_size"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or not 1 <= value <= INT64_MAX):
                raise UserError(f"{prefix}.{key}: expected a positive integer (at most {INT64_MAX}), got "
                                f"{show_int(value)}")
        if not isinstance(self.options, dict):
            raise UserError(f"{prefix}.options: expected a mapping, got {self.options!r}")
        loader_options(self.name, self.options, f"{prefix}.options")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def data_key(spec: DataSpec) -> str:
    """Identifies a dataset as loaded (name, path, split, scaling, ...): runs with equal keys share data."""
    return json.dumps(asdict(spec), sort_keys=True, default=str)


DATASETS_TEST_SPLIT = 0.2  # Splits.from_datasets without a test set holds out this much of train, as digits does


@dataclass
class Splits:
    """Float32 tensors ready to train on, plus what they are. A streamed training set (Splits.from_datasets'
    `stream`) has no `x_train` (None): its examples stay in `train_dataset`, fetched a batch at a time by the
    training loop; its labels are still `y_train`."""

    x_train: Optional[torch.Tensor]
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    val_is_test: bool
    source: str
    spec: DataSpec
    cache: Optional[dict] = None  # RawDataset.cache: whether the decoded-data cache served these images
    train_dataset: Optional[StreamedExamples] = None  # a streamed training set's examples (x_train is None)
    loader_workers: int = 0  # the DataLoader's num_workers for a streamed training set

    @property
    def streamed(self) -> bool:
        return self.train_dataset is not None

    @property
    def device(self) -> torch.device:
        """Where the tensors are (a streamed training set's batches are moved here)."""
        return self.x_val.device

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_val.shape[1:] if self.streamed else self.x_train.shape[1:])

    def train_examples(self, index: torch.Tensor) -> torch.Tensor:
        """The training images at `index` (a probe set), on the device of the splits."""
        if not self.streamed:
            return self.x_train[index]
        return self.train_dataset.stacked(index.tolist(), "data")[0].to(self.device)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str) -> "Splits":
        """Move every tensor to `device` once (the training loop then never copies data)."""
        moved = {k: getattr(self, k).to(device) for k in ("y_train", "x_test", "y_test")}
        moved["x_train"] = None if self.streamed else self.x_train.to(device)  # streamed: batches move in the loop
        if self.val_is_test:
            moved["x_val"], moved["y_val"] = moved["x_test"], moved["y_test"]
        else:
            moved["x_val"], moved["y_val"] = self.x_val.to(device), self.y_val.to(device)
        return Splits(**moved, classes=self.classes, val_is_test=self.val_is_test, source=self.source, spec=self.spec,
                      cache=self.cache, train_dataset=self.train_dataset, loader_workers=self.loader_workers)

    def summary(self) -> dict:
        summary = {"dataset": self.spec.name, "source": self.source, "input_shape": list(self.input_shape),
                   "classes": len(self.classes), "train": len(self.y_train), "val": len(self.y_val),
                   "test": len(self.y_test), "val_is_test": self.val_is_test, "cache": self.cache}
        return {**summary, "streamed": True} if self.streamed else summary

    @classmethod
    def from_datasets(cls, train, val=None, test=None, *, classes: Optional[list[str]] = None,
                      val_split: float = 0.1, split_seed: int = 0, test_split: float = DATASETS_TEST_SPLIT,
                      image_size: Optional[int] = None, fit: str = "resize", name: str = "datasets",
                      stream: Optional[bool] = None, max_resident_bytes: Optional[int] = None,
                      loader_workers: int = 0) -> "Splits":
        """Splits of the user's own data: each of `train`, `val`, `test` a map-style Dataset yielding (image,
        label) or an (x, y) pair of arrays or tensors (relulab.data.datasets), stacked into tensors once.

        Without `val`, a stratified `val_split` of train (a fraction, or a count: the rule of `split:
        stratified:0.1`, drawn with `split_seed`) is the validation set; without `test`, a fixed stratified
        `test_split` of train (seed 0) is held out as the test set first, as the loaders do for datasets that
        have none (digits), and `source` says so. `val` and `test` the same object: validation is the test set
        (`val_is_test`). `classes`: the class names; by default the train dataset's `classes` attribute, or
        0..the largest label. `image_size`, `fit`: as data.image_size and data.fit.

        `stream`: True keeps the training set in its dataset (`train_dataset`; `x_train` is None), read once for
        its labels and then fetched a batch at a time through a DataLoader (`loader_workers` workers, pinned
        memory on CUDA); False stacks it; None (the default) streams it when its stacked tensors would take more
        than `max_resident_bytes`, or, without that limit, more memory than this machine has available.
        Validation and test sets are always stacked (every epoch reads them whole), and refused if they would
        not fit."""
        if stream is not None and not isinstance(stream, bool):
            raise UserError(f"stream: expected true, false or None (stream when too big), got {stream!r}")
        if max_resident_bytes is not None and (isinstance(max_resident_bytes, bool)
                                               or not isinstance(max_resident_bytes, int) or max_resident_bytes < 0):
            raise UserError(f"max_resident_bytes: expected a number of bytes, got {max_resident_bytes!r}")
        if isinstance(loader_workers, bool) or not isinstance(loader_workers, int) or loader_workers < 0:
            raise UserError(f"loader_workers: expected a whole number of worker processes, got {loader_workers!r}")
        if stream is None:
            stream = _too_big(resident_bytes(train, "train"), max_resident_bytes)
        if stream:
            return _streamed_from_datasets(train, val, test, classes, val_split, split_seed, test_split, image_size,
                                           name, loader_workers)
        return _from_datasets(train, val, test, classes, val_split, split_seed, test_split, image_size, fit, name)


# ---------------------------------------------------------------- loaders


def _load_digits(spec: DataSpec) -> RawDataset:
    gray, target = _digits_arrays()
    # 0..16 gray levels -> 0..255, so that "pixels / 255" means the same as for MNIST.
    images = np.rint(gray * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = target.astype(np.int64)
    # Digits has no test set: hold out a fixed, stratified 20% (seed 0) as one.
    train_idx, test_idx = _stratified_indices(labels, 0.2, seed=0)
    return RawDataset(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], DIGIT_CLASSES,
                      "sklearn.datasets.load_digits")


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: the 8x8 images (0..16, float64) and their labels, read from the file and in the way
    `sklearn.datasets.load_digits` reads them, without importing scikit-learn, which takes about a second (it
    loads scipy); through load_digits itself where the file is not where scikit-learn keeps it."""
    found = importlib.util.find_spec("sklearn")  # finds the package without running it
    folders = found.submodule_search_locations if found is not None else None
    csv = Path(list(folders)[0]) / "datasets" / "data" / "digits.csv.gz" if folders else None
    if csv is None or not csv.is_file():
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target
    with gzip.open(csv, mode="rt", encoding="utf-8") as text:
        data = np.loadtxt(text, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


def _find_idx_dir(name: str, spec: DataSpec) -> Path:
    searched = sources.search_dirs(name, spec.path)
    for folder in searched:
        if _idx_paths(folder) is not None:
            return folder
    if spec.download and spec.path is None:
        fetched = sources.download(name)
        if fetched is not None:
            return fetched
    raise sources.not_found(name, searched)


def _idx_paths(folder: Path) -> Optional[list[Path]]:
    """The four IDX files in `folder`, gzipped or not, or None."""
    if not folder.is_dir():
        return None
    found = []
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        candidates = [folder / f"{stem}.gz", folder / stem, folder / stem.replace("-idx", ".idx")]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found


def _idx_loader(name: str, classes: list[str]) -> Callable[[DataSpec], RawDataset]:
    def load(spec: DataSpec) -> RawDataset:
        folder = _find_idx_dir(name, spec)
        paths = _idx_paths(folder)
        # Gunzipping and copying Fashion-MNIST takes about 0.3 s a load, reading the cached arrays about 0.1 s:
        # cached as an image folder is, keyed on the four files' paths, sizes and mtimes and the class names.
        cache_file = _cache_file(folder, [(p.name, p, p.stat()) for p in paths], f"{name} IDX files "
                                 f"{json.dumps(classes)}")

        def read() -> RawDataset:
            train_images, train_labels, test_images, test_labels = paths
            x_train, y_train = formats.read_idx_pair(train_images, train_labels)
            x_test, y_test = formats.read_idx_pair(test_images, test_labels)
            return RawDataset(x_train, y_train, x_test, y_test, classes, str(folder))

        return _through_cache(cache_file, folder, read)

    return load


def _cifar_candidates(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder]
    return [folder / "cifar-10-python.tar.gz", folder / "cifar-10-batches-py", folder / "cifar10-jpeg.tar.gz",
            folder / "cifar10-jpeg", folder] if folder.is_dir() else []


def _load_cifar10(spec: DataSpec) -> RawDataset:
    searched = sources.search_dirs("cifar10", spec.path)
    for folder in searched:
        for candidate in _cifar_candidates(folder):
            raw = _try_cifar(candidate)
            if raw is not None:
                return raw
    if spec.download and spec.path is None:
        fetched = sources.download("cifar10")
        if fetched is not None:
            return _try_cifar(fetched / "cifar-10-python.tar.gz")
    raise sources.not_found("cifar10", searched)


def _try_cifar(path: Path) -> Optional[RawDataset]:
    """CIFAR-10 from a python-pickle tarball or folder, or from an image-folder layout; None if neither."""
    if path.is_dir() and (path / "data_batch_1").is_file():
        blobs = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
        return _cifar_from_batches(blobs, path)
    if formats.is_archive(path) and path.name.startswith("cifar-10-python"):
        blobs = {name.rsplit("/", 1)[-1]: blob for name, blob in formats.iter_archive(path)}
        return _cifar_from_batches(blobs, path)
    if formats.is_archive(path) or (path.is_dir() and (path / "train").is_dir()):
        raw = load_image_folder(path)
        if raw.classes != CIFAR10_CLASSES:
            raise UserError(f"{path}: class folders {raw.classes} are not CIFAR-10's {CIFAR10_CLASSES}")
        return raw
    return None


def _cifar_from_batches(blobs: dict[str, bytes], source: Path) -> RawDataset:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if n not in blobs]
    if missing:
        raise UserError(f"{source}: missing CIFAR-10 batches {missing}")
    parts = [formats.read_cifar_batch(blobs[n], f"{source}:{n}") for n in names]
    x_train = np.concatenate([p[0] for p in parts[:5]])
    y_train = np.concatenate([p[1] for p in parts[:5]])
    return RawDataset(x_train, y_train, parts[5][0], parts[5][1], CIFAR10_CLASSES, str(source))


def _load_image_folder_spec(spec: DataSpec) -> RawDataset:
    if not spec.path:
        raise UserError("data.path: the image-folder dataset needs a folder or a .zip / .tar.gz archive")
    return load_image_folder(sources.given_path(spec.path))


def load_image_folder(path: Path) -> RawDataset:
    """Images laid out as split/class/*.ext in a folder or archive. The decoded arrays are cached, keyed on what
    was read: every member's path, size and mtime for a folder, the content for an archive."""
    members = None if path.is_file() else _folder_members(path)

    def read() -> RawDataset:
        files = formats.iter_archive(path) if path.is_file() else _read_members(members)
        return _assemble_image_folder(files, path)

    return _through_cache(_cache_file(path, members), path, read)


def _through_cache(cache_file: Path, source: Path, read: Callable[[], RawDataset]) -> RawDataset:
    """The dataset cached in `cache_file`, else `read()`'s, checked and then cached (what a later load would
    refuse is never cached); its `cache` says which."""
    cached = _read_cache(cache_file, source)
    if cached is not None:
        return cached
    raw = read()
    check_raw(raw)
    raw.cache = {"file": str(cache_file) if _write_cache(cache_file, raw) else None, "hit": False}
    return raw


def _folder_members(root: Path) -> list[tuple[str, Path, os.stat_result]]:
    """Every regular file under `root` (links to files followed, links to folders not), with its stat: one walk."""
    members = []
    for folder, _, names in os.walk(root):
        for name in names:
            file = Path(folder) / name
            try:
                info = file.stat()
            except OSError:  # a dangling link: nothing to read
                continue
            if stat.S_ISREG(info.st_mode):
                members.append((file.relative_to(root).as_posix(), file, info))
    return sorted(members, key=lambda member: member[0])


def _read_members(members: list[tuple[str, Path, os.stat_result]]) -> Iterator[tuple[str, bytes]]:
    for name, file, _ in members:
        try:
            yield name, file.read_bytes()
        except OSError as e:
            raise UserError(f"{file}: cannot be read ({e.strerror or e})") from None


# The splits an image folder can use: train, and the first of the others that is there
_TEST_SPLITS = ("test", "val", "valid", "validation")


def _assemble_image_folder(files: Iterator[tuple[str, bytes]], source: Path) -> RawDataset:
    by_split: dict[str, list[tuple[str, str, int]]] = {}  # split: (label, file name, its place in `decoded`)
    place = itertools.count()

    def image_files() -> Iterator[tuple[bytes, str]]:
        # Decoded as they are read (the workers start while the archive is still being walked); an image that
        # turns out unused (in a second test-like split) is decoded for nothing, and its errors are not raised.
        for name, blob in files:
            parts = name.split("/")
            split = parts[-3].lower() if len(parts) >= 3 else None
            if (split == "train" or split in _TEST_SPLITS) and parts[-1].lower().endswith(formats.IMAGE_EXTENSIONS):
                by_split.setdefault(split, []).append((parts[-2], parts[-1], next(place)))
                yield blob, f"{source}:{parts[-2]}/{parts[-1]}"

    decoded = decode_images(image_files(), errors="return")
    if "train" not in by_split:
        raise UserError(f"{source}: expected images laid out as train/<class>/<file> (and test/<class>/<file>)")
    classes = sorted({label for label, _, _ in by_split["train"]})
    test_split = next((s for s in _TEST_SPLITS if s in by_split), None)
    splits = [_sorted_split(by_split[name], classes, source) for name in ("train", test_split) if name]
    (x_train, y_train), *test = [_stack_split(items, [_image(decoded[i]) for _, _, i in items], classes, source)
                                 for items in splits]
    if not test:  # no test folder: hold out a fixed stratified sixth
        train_idx, test_idx = _stratified_indices(y_train, 1 / 6, seed=0)
        return RawDataset(x_train[train_idx], y_train[train_idx], x_train[test_idx], y_train[test_idx], classes,
                          str(source))
    (x_test, y_test), = test
    return RawDataset(x_train, y_train, x_test, y_test, classes, str(source))


def _image(decoded: np.ndarray | UserError) -> np.ndarray:
    if isinstance(decoded, UserError):
        raise decoded
    return decoded


def _sorted_split(items: list[tuple[str, str, int]], classes: list[str], source: Path):
    """A split's (label, file name, place) by class, then file name; its classes must be the training set's."""
    items = sorted(items, key=lambda item: (item[0], item[1]))
    unknown = sorted({label for label, _, _ in items} - set(classes))
    if unknown:
        raise UserError(f"{source}: classes {unknown} appear in a test split but not in train")
    return items


def _stack_split(items: list[tuple[str, str, int]], decoded: list[np.ndarray], classes: list[str], source: Path):
    """A split's decoded images as (N, C, H, W) uint8 and its labels; every image must have the first's shape."""
    images, labels, first_shape = [], [], None
    for (label, filename, _), image in zip(items, decoded):
        first_shape = first_shape or image.shape
        if image.shape != first_shape:
            raise UserError(f"{source}:{label}/{filename}: image is {image.shape[1]}x{image.shape[0]}x"
                            f"{image.shape[2]}, expected {first_shape[1]}x{first_shape[0]}x{first_shape[2]} like"
                            " the others")
        images.append(image)
        labels.append(classes.index(label))
    x = np.stack(images).transpose(0, 3, 1, 2).copy()
    return x, np.asarray(labels, dtype=np.int64)


# ---------------------------------------------------------------- the decoded-data cache

CACHE_VERSION = 2  # in every key: bump it when what is cached, or how it is keyed, changes


def _cache_file(path: Path, members: Optional[list[tuple[str, Path, os.stat_result]]], kind: str = "image folder"
                ) -> Path:
    """Where the arrays decoded from `path` are cached. An archive is keyed on its content (so a rewritten
    archive misses even with its old size and mtime); a folder on every member's path, size and mtime (a stat
    per file, no read: adding, deleting or rewriting an image deep inside leaves the folder itself unchanged).
    `kind` says what was decoded (an image folder, a dataset's IDX files), so two loaders never share a key."""
    digest = hashlib.sha256(f"relulab decoded {kind} v{CACHE_VERSION}\0".encode())
    if members is None:
        digest.update(f"archive\0{path.stat().st_size}\0".encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    else:
        digest.update(f"folder\0{path.resolve()}\0".encode())
        for name, _, info in members:  # no file name holds a NUL, so the fields cannot run into each other
            digest.update(f"{name}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
    return sources.cache_dir() / "decoded" / f"{digest.hexdigest()[:32]}.npz"


CACHE_ARRAYS = ("x_train", "y_train", "x_test", "y_test", "classes")


def _read_cache(file: Path, source: Path) -> Optional[RawDataset]:
    """The dataset cached in `file`; None when there is none, or when it is damaged: then it is named on stderr
    and deleted, and the caller decodes the source again."""
    if not file.is_file():
        return None
    try:
        arrays = _cached_arrays(file)
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        problem = f"{type(e).__name__}: {e}"
    else:
        classes = arrays.pop("classes")
        problem = None if classes.ndim == 1 and classes.dtype.kind == "U" else "its class names are not a list"
        if problem is None:
            raw = RawDataset(**arrays, classes=[str(c) for c in classes], source=str(source),
                             cache={"file": str(file), "hit": True})
            problem = _disagreement(raw)
            if problem is None:
                return raw
    print(f"relulab: warning: decoded-data cache {file} is damaged ({' '.join(problem.split())}); rebuilding it",
          file=sys.stderr)
    try:
        file.unlink()
    except OSError:  # cannot delete it: the rebuilt arrays replace it, or (a read-only cache) are not cached
        pass
    return None


def _cached_arrays(file: Path) -> dict[str, np.ndarray]:
    """The arrays of a cache file, read in full; what np.load raises, or ValueError, when it is not one."""
    loaded = np.load(file, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # a lone .npy array: np.load reads those too
        raise ValueError("a single array, not an .npz archive")
    with loaded:
        return {name: loaded[name] for name in CACHE_ARRAYS}


def _write_cache(target: Path, raw: RawDataset) -> bool:
    """Cache the decoded arrays (through a temp file and a rename: never half a file); whether it was written."""
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.npz")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, x_train=raw.x_train, y_train=raw.y_train, x_test=raw.x_test, y_test=raw.y_test,
                 classes=np.asarray(raw.classes, dtype=str))
        tmp.replace(target)
    except OSError:  # a cache we cannot write only costs time
        tmp.unlink(missing_ok=True)
        return False
    return True


# ---------------------------------------------------------------- synthetic data, and loader options


def _load_synthetic(spec: DataSpec) -> RawDataset:
    """Class prototypes plus noise: a learnable, deterministic toy problem of any shape."""
    opts = loader_options("synthetic", spec.options)
    n, k, size, channels, noise = (opts[key] for key in ("n", "classes", "size", "channels", "noise"))
    if n < 2 * k:
        raise UserError(f"data.options.n: synthetic needs n >= 2 * classes; got n={n}, classes={k}")
    pixels = channels * size * size
    # The float64 prototypes, images and noise, the uint8 images and the int64 labels, before any is made.
    check_fits((k + 2 * n) * pixels * 8 + n * pixels + n * 8, "data.options",
               f"synthetic data of {n} images of {channels}x{size}x{size}")
    rng = np.random.default_rng(1234)
    prototypes = rng.uniform(0, 255, size=(k, channels, size, size))
    labels = np.arange(n) % k
    rng.shuffle(labels)
    images = prototypes[labels]
    images *= 0.6  # in place, step by step: the same numbers as one expression, without its temporaries
    images += 50
    images += rng.normal(0, noise, size=images.shape)
    images = np.clip(images, 0, 255, out=images).astype(np.uint8)
    cut = n * 4 // 5
    return RawDataset(images[:cut], labels[:cut].astype(np.int64), images[cut:], labels[cut:].astype(np.int64),
                      [f"class{i}" for i in range(k)], "synthetic")


@dataclass(frozen=True)
class LoaderOption:
    """One of the data.options a loader takes: an integer or a (finite) number, its least value, its default."""

    kind: type  # int or float
    minimum: float
    default: float

    def check(self, value, field: str) -> None:
        if self.kind is int:
            fits, what = isinstance(value, int) and not isinstance(value, bool), "an integer"
        else:
            fits, what = is_number(value) and math.isfinite(value), "a number"
        if not (fits and value >= self.minimum):
            raise UserError(f"{field}: expected {what} >= {self.minimum:g}, got {value!r}")
        if self.kind is int and value > INT64_MAX:  # the store keeps the spec, and SQLite's integers have 64 bits
            raise UserError(f"{field}: {show_int(value)} is beyond a 64-bit integer")


# The options each loader takes; a loader not named here takes none.
LOADER_OPTIONS: dict[str, dict[str, LoaderOption]] = {
    "synthetic": {"n": LoaderOption(int, 2, 1200), "classes": LoaderOption(int, 2, 4),
                  "size": LoaderOption(int, 1, 8), "channels": LoaderOption(int, 1, 1),
                  "noise": LoaderOption(float, 0, 60.0)},
}


def loader_options(name: str, options: dict, field: str = "data.options") -> dict:
    """`options` checked against what loader `name` takes (errors name `field`.KEY), with the defaults filled in."""
    table = LOADER_OPTIONS.get(name, {})
    for key, value in options.items():
        if key not in table:
            if not table:
                raise UserError(f"{field}.{key}: unknown option for {name}; expected no options")
            hint = get_close_matches(str(key), sorted(table), n=1)
            did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise UserError(f"{field}.{key}: unknown option for {name}{did_you_mean}; expected one of: "
                            f"{', '.join(sorted(table))}")
        table[key].check(value, f"{field}.{key}")
    return {**{key: option.default for key, option in table.items()}, **options}


LOADERS: dict[str, Callable[[DataSpec], RawDataset]] = {
    "digits": _load_digits,
    "mnist": _idx_loader("mnist", DIGIT_CLASSES),
    "fashion-mnist": _idx_loader("fashion-mnist", FASHION_CLASSES),
    "cifar10": _load_cifar10,
    "image-folder": _load_image_folder_spec,
    "synthetic": _load_synthetic,
}
BUILT_IN = ("digits", "synthetic")  # made in memory: they read no files, so take no data.path
SCALINGS = ("255", "standardize")


# ---------------------------------------------------------------- splits and transforms


_COUNT = re.compile(r"[0-9]+")


def parse_split(text: str, field: str = "split") -> tuple[str, float]:
    """'first:5000' -> ('first', 5000); 'stratified:0.1' -> ('stratified', 0.1); 'test' -> ('test', 0).

    A count is written without a decimal point and a fraction is below 1, so that 'stratified:1.0' (one
    image? all of them?) cannot be read two ways: it is refused."""
    expected = UserError(f"{field}: expected first:N, stratified:N, stratified:FRACTION or test; got {text!r}")
    if not isinstance(text, str):
        raise expected
    kind, _, amount = text.partition(":")
    amount = amount.strip()
    if kind == "test" and not amount:
        return "test", 0
    if kind not in ("first", "stratified"):
        raise expected
    if _COUNT.fullmatch(amount):
        if int(amount) < 1:
            raise expected
        return kind, int(amount)
    try:
        value = float(amount)
    except ValueError:
        raise expected from None
    if value >= 1 and value.is_integer():
        raise UserError(f"{field}: {text} is ambiguous: a fraction must be below 1 ({kind}:0.1), a count is a whole "
                        f"number without a decimal point ({kind}:500)")
    if not 0 < value < 1:
        raise expected
    if kind == "first":
        raise UserError(f"{field}: first:N takes a count of images, such as first:5000; got {text!r} (for a "
                        "fraction, stratified:0.1)")
    return kind, value


def _stratified_indices(labels: np.ndarray, holdout: float, seed: int, field: str = "split"
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out) with `holdout` (a fraction, or a count if >= 1) per class, deterministic."""
    rng = np.random.default_rng(seed)
    n_holdout = int(round(holdout * len(labels))) if holdout < 1 else int(holdout)
    if not 0 < n_holdout < len(labels):
        raise UserError(f"{field}: cannot hold out {n_holdout} of {len(labels)} examples")
    held = []
    classes, counts = np.unique(labels, return_counts=True)
    # Largest-remainder allocation keeps the per-class shares and the exact total.
    quotas = counts * n_holdout / len(labels)
    take = np.floor(quotas).astype(int)
    for i in np.argsort(-(quotas - take))[: n_holdout - take.sum()]:
        take[i] += 1
    for cls, k in zip(classes, take):
        members = np.flatnonzero(labels == cls)
        held.append(rng.choice(members, size=k, replace=False))
    held_out = np.sort(np.concatenate(held))
    keep = np.setdiff1d(np.arange(len(labels)), held_out)
    return keep, held_out


def _carve_validation(raw: RawDataset, spec: DataSpec):
    kind, amount = parse_split(spec.split, "data.split")
    if kind == "test":
        return (raw.x_train, raw.y_train), (raw.x_test, raw.y_test), True
    if kind == "first":
        if amount >= len(raw.y_train):
            raise UserError(f"data.split: first:{amount} leaves no training data ({len(raw.y_train)} examples)")
        return (raw.x_train[amount:], raw.y_train[amount:]), (raw.x_train[:amount], raw.y_train[:amount]), False
    keep, val = _stratified_indices(raw.y_train, amount, spec.split_seed)
    return (raw.x_train[keep], raw.y_train[keep]), (raw.x_train[val], raw.y_train[val]), False


def _fit_size(x: torch.Tensor, size: Optional[int], fit: str) -> torch.Tensor:
    if size is None or x.shape[-1] == size and x.shape[-2] == size:
        return x
    if fit == "pad":
        pad_h, pad_w = size - x.shape[-2], size - x.shape[-1]
        if pad_h < 0 or pad_w < 0:
            raise UserError(f"data.image_size: cannot pad {x.shape[-2]}x{x.shape[-1]} images down to {size}")
        return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _to_float(x: np.ndarray, spec: DataSpec) -> torch.Tensor:
    """The images as float32, always a tensor of their own (load_data scales it in place)."""
    floats = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32, copy=True)
    return _fit_size(floats, spec.image_size, spec.fit)


# ---------------------------------------------------------------- data by reference

PYTHON = "python"
# DataSpec fields that only relulab's own loaders read (with the value data by reference must leave them at)
LOADER_FIELDS = {"path": None, "scaling": "255", "train_size": None, "options": {}}
DATASETS_PARTS = ("train", "val", "test", "classes")


def _validate_reference(spec: DataSpec, prefix: str) -> None:
    """Check data by reference's fields and fill in `source_sha256` (importing the target)."""
    if spec.target is None:
        raise UserError(f"{prefix}.target: data by reference (name: python) needs a target, 'module:function' or "
                        "'file.py:function'")
    for key, neutral in LOADER_FIELDS.items():
        if getattr(spec, key) != neutral:
            raise UserError(f"{prefix}.{key}: data by reference is made by its own code; leave {prefix}.{key} out "
                            f"and pass the function what it takes in {prefix}.kwargs")
    if parse_split(spec.split, f"{prefix}.split")[0] == "first":
        raise UserError(f"{prefix}.split: data by reference takes stratified:N, stratified:FRACTION or test; got "
                        f"{spec.split!r}")
    record_source(spec, prefix)


def _load_python(spec: DataSpec) -> Splits:
    """The datasets the target returns, as Splits.from_datasets makes them (the split, image_size and fit from
    `spec`). The target returns (train, val, test) (val or test may be None), a dict of those (and `classes`), or
    the train dataset alone; each a map-style Dataset or an (x, y) pair of arrays."""
    function, sha = load_target(spec.target, "data.target")
    check_same_source(spec.target, spec.source_sha256, sha, "data.source_sha256")
    parts = _datasets_parts(call_target(function, spec.kwargs, {}, spec.target, "data.target", "data.kwargs"),
                            spec.target)
    kind, amount = parse_split(spec.split, "data.split")
    if kind == "test":
        if parts["test"] is None:
            raise UserError(f"data.split: test uses the test set as validation; {spec.target} gives no test set")
        parts["val"] = parts["test"]
    try:
        splits = Splits.from_datasets(parts["train"], parts["val"], parts["test"], classes=parts["classes"],
                                      val_split=amount if kind == "stratified" else 0.1, split_seed=spec.split_seed,
                                      image_size=spec.image_size, fit=spec.fit, name=PYTHON)
    except UserError as e:
        raise UserError(f"data.target: {e}") from None
    return replace(splits, spec=spec, source=f"{spec.target}: {splits.source}")


def _datasets_parts(result, target: str) -> dict:
    if isinstance(result, dict):
        unknown = [k for k in result if k not in DATASETS_PARTS]
        if unknown or "train" not in result:
            raise UserError(f"data.target: {target} returned a dict with keys {sorted(map(str, result))}; expected "
                            "train and any of val, test, classes")
        return {part: result.get(part) for part in DATASETS_PARTS}
    if isinstance(result, tuple) and len(result) == 3:
        return dict(zip(DATASETS_PARTS, (*result, None)))
    if isinstance(result, tuple) and len(result) == 2 and not all(isinstance(a, (np.ndarray, torch.Tensor))
                                                                  for a in result):
        raise UserError(f"data.target: {target} returned 2 values; expected (train, val, test) (None for a part not "
                        "given), a dict of them, or the train dataset alone")
    return {"train": result, "val": None, "test": None, "classes": None}


BY_REFERENCE: dict[str, Callable[[DataSpec], Splits]] = {PYTHON: _load_python}  # loaders that make Splits themselves


def load_raw(spec: DataSpec) -> RawDataset:
    spec.validate()
    raw = LOADERS[spec.name](spec)
    check_raw(raw)
    return raw


def check_raw(raw: RawDataset) -> None:
    """Refuse what no loader may hand on: arrays that disagree, an empty split, or a single class to learn."""
    problem = _disagreement(raw)
    if problem is not None:
        raise UserError(f"{raw.source}: {problem}")
    if len(raw.y_train) == 0 or len(raw.y_test) == 0:
        raise UserError(f"{raw.source}: no images found")
    present = np.unique(raw.y_train)
    if len(present) < 2:
        raise UserError(f"{raw.source}: only one class ({raw.classes[present[0]]}) in the training data; a "
                        "classifier needs at least 2")


def _disagreement(raw: RawDataset) -> Optional[str]:
    """What in `raw`'s arrays does not fit together, or None. The rule for every loader and every cache file:
    uint8 N x C x H x W images, one integer label per image naming a class, train and test of one shape."""
    for part in ("train", "test"):
        x, y = getattr(raw, f"x_{part}"), getattr(raw, f"y_{part}")
        if x.ndim != 4 or x.dtype != np.uint8:
            return f"{part} images are {x.dtype} of shape {x.shape}; expected uint8 N x C x H x W"
        if y.ndim != 1 or y.dtype.kind not in "iu":
            return f"{part} labels are {y.dtype} of shape {y.shape}; expected one integer per image"
        if len(y) != len(x):
            return f"{len(y)} {part} labels for {len(x)} {part} images"
        if y.size and (y.min() < 0 or y.max() >= len(raw.classes)):
            return f"{part} labels run {y.min()}..{y.max()}; expected 0..{len(raw.classes) - 1} for its classes"
    if raw.x_test.shape[1:] != raw.x_train.shape[1:]:
        shape = lambda x: "x".join(str(d) for d in x.shape[1:])  # noqa: E731
        return (f"test images are {shape(raw.x_test)} (channels x height x width), training images "
                f"{shape(raw.x_train)}; they must be the same")
    return None


def load_data(spec: DataSpec) -> Splits:
    """Load, split, resize/pad and scale a dataset; tensors stay on the CPU until `.to(device)`."""
    if spec.name in BY_REFERENCE:
        spec.validate()
        return BY_REFERENCE[spec.name](spec)
    raw = load_raw(spec)
    (x_tr, y_tr), (x_va, y_va), val_is_test = _carve_validation(raw, spec)
    if spec.train_size is not None:
        if spec.train_size > len(y_tr):
            raise UserError(f"data.train_size: {spec.train_size} is more than the {len(y_tr)} training examples the "
                            "split leaves")
        if spec.train_size < len(y_tr):
            _, subset = _stratified_indices(y_tr, spec.train_size, spec.split_seed + 1)
            x_tr, y_tr = x_tr[subset], y_tr[subset]
    if spec.image_size is not None:
        images = len(y_tr) + len(raw.y_test) + (0 if val_is_test else len(y_va))
        channels, size = raw.x_train.shape[1], spec.image_size
        check_fits(images * channels * size * size * 4, "data.image_size",
                   f"{images} images of {channels}x{size}x{size} float32")
    x_train, x_test = _to_float(x_tr, spec), _to_float(raw.x_test, spec)
    x_val = x_test if val_is_test else _to_float(x_va, spec)
    if spec.scaling == "standardize":
        mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
        std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    else:
        mean, std = torch.zeros(1), torch.full((1,), 255.0)
    # In place (the tensors are _to_float's own copies): the same numbers as (x - mean) / std, without two more
    # copies of each set (Fashion-MNIST's training set is 188 MB as floats).
    x_train, x_test = x_train.sub_(mean).div_(std), x_test.sub_(mean).div_(std)
    x_val = x_test if val_is_test else x_val.sub_(mean).div_(std)
    to_labels = lambda y: torch.from_numpy(np.ascontiguousarray(y)).long()  # noqa: E731
    y_test = to_labels(raw.y_test)
    return Splits(x_train, to_labels(y_tr), x_val, y_test if val_is_test else to_labels(y_va), x_test, y_test,
                  raw.classes, val_is_test, raw.source, spec, raw.cache)


# ---------------------------------------------------------------- the user's own datasets


def _from_datasets(train, val, test, classes, val_split, split_seed, test_split, image_size, fit, name) -> Splits:
    val_kind, val_amount = _holdout(val_split, "val_split")
    _, test_amount = _holdout(test_split, "test_split")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or not 1 <= image_size <= INT64_MAX):
        raise UserError(f"image_size: expected a positive integer, got {image_size!r}")
    if fit not in ("resize", "pad"):
        raise unknown_choice("fit", fit, ["resize", "pad"])
    x_tr, y_tr = to_tensors(train, "train")
    given = _given_parts(val, test, x_tr.shape[1:])
    classes = _class_names(classes, train, {"train": y_tr, **{part: y for part, (_, y) in given.items()}})
    source = "Splits.from_datasets"
    if "test" in given:
        x_te, y_te = given["test"]
    else:
        keep, held = _stratified_indices(y_tr.numpy(), test_amount, 0, "test_split")
        (x_tr, y_tr), (x_te, y_te) = (x_tr[keep], y_tr[keep]), (x_tr[held], y_tr[held])
        source += f" (no test set given: a stratified {test_split} of train, seed 0, held out as the test set)"
    val_is_test = val is not None and val is test
    if val_is_test:
        x_va, y_va = x_te, y_te
    elif "val" in given:
        x_va, y_va = given["val"]
    else:
        keep, held = _stratified_indices(y_tr.numpy(), val_amount, split_seed, "val_split")
        (x_tr, y_tr), (x_va, y_va) = (x_tr[keep], y_tr[keep]), (x_tr[held], y_tr[held])
    _check_two_classes(y_tr, classes)
    if image_size is not None:
        x_tr, x_va, x_te = _resized([x_tr, x_va, x_te], image_size, fit, val_is_test)
    spec = DataSpec(name=name, split=f"{val_kind}:{val_amount}" if val is None else "given", image_size=image_size,
                    fit=fit, split_seed=split_seed)
    return Splits(x_tr, y_tr, x_va, y_va, x_te, y_te, classes, val_is_test, source, spec)


def _too_big(nbytes: int, limit: Optional[int]) -> bool:
    """Whether a training set of `nbytes` stacked is to be streamed: over `limit`, or over the memory available."""
    if limit is not None:
        return nbytes > limit
    available = memory_available()
    return available is not None and nbytes > available


def _streamed_from_datasets(train, val, test, classes, val_split, split_seed, test_split, image_size, name,
                            loader_workers) -> Splits:
    """from_datasets with the training set streamed: the same splits (the same stratified hold-outs, drawn from
    the labels), the held-out parts stacked, the rest left in the dataset."""
    val_kind, val_amount = _holdout(val_split, "val_split")
    _, test_amount = _holdout(test_split, "test_split")
    if image_size is not None:
        raise UserError("image_size: a streamed training set is not resized; give the dataset images of the size "
                        "to train on, or stream=False")
    examples = StreamedExamples(train, "train")
    y_tr = streamed_labels(examples)
    given = _given_parts(val, test, examples.shape)
    classes = _class_names(classes, train, {"train": y_tr, **{part: y for part, (_, y) in given.items()}})
    source = "Splits.from_datasets"
    if "test" in given:
        x_te, y_te = given["test"]
    else:
        keep, held = _stratified_indices(y_tr.numpy(), test_amount, 0, "test_split")
        x_te, y_te = examples.stacked(held, "test_split")
        examples, y_tr = examples.subset(keep), y_tr[keep]
        source += f" (no test set given: a stratified {test_split} of train, seed 0, held out as the test set)"
    val_is_test = val is not None and val is test
    if val_is_test:
        x_va, y_va = x_te, y_te
    elif "val" in given:
        x_va, y_va = given["val"]
    else:
        keep, held = _stratified_indices(y_tr.numpy(), val_amount, split_seed, "val_split")
        x_va, y_va = examples.stacked(held, "val_split")
        examples, y_tr = examples.subset(keep), y_tr[keep]
    _check_two_classes(y_tr, classes)
    spec = DataSpec(name=name, split=f"{val_kind}:{val_amount}" if val is None else "given", split_seed=split_seed)
    return Splits(None, y_tr, x_va, y_va, x_te, y_te, classes, val_is_test, source, spec,
                  train_dataset=examples, loader_workers=loader_workers)


def _given_parts(val, test, train_shape) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The validation and test sets given, as tensors, each checked to hold examples of train's shape."""
    given = {field: to_tensors(source, field) for field, source in (("val", val), ("test", test))
             if source is not None}
    for part, (x, _) in given.items():
        if x.shape[1:] != tuple(train_shape):
            raise UserError(f"{part}: examples of shape {_dims(x.shape[1:])}, train's are {_dims(train_shape)}; "
                            "they must be the same")
    return given


def _check_two_classes(y_train: torch.Tensor, classes: list[str]) -> None:
    if len(torch.unique(y_train)) < 2:
        raise UserError(f"train: only one class ({classes[int(y_train[0])]}) in the training data; a classifier "
                        "needs at least 2")


def _holdout(amount, field: str) -> tuple[str, float]:
    """A stratified hold-out of `amount` (a fraction below 1 or a whole count), checked as data.split checks it."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise UserError(f"{field}: expected a fraction below 1 or a whole count, got {amount!r}")
    return parse_split(f"stratified:{amount}", field)


def _class_names(classes, train, labels: dict[str, torch.Tensor]) -> list[str]:
    """The class names (given, the train dataset's `classes`, or 0..the largest label), every label among them."""
    if classes is None:
        classes = getattr(train, "classes", None)
        if classes is None:
            classes = [str(c) for c in range(max(int(y.max()) for y in labels.values()) + 1)]
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__len__") or not len(classes):
        raise UserError(f"classes: expected a list of class names, got {classes!r}")
    names = [str(c) for c in classes]
    if len(set(names)) != len(names):
        raise UserError(f"classes: names appear twice in {names}")
    for part, y in labels.items():
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= len(names):
            raise UserError(f"{part}: labels run {low}..{high}; expected 0..{len(names) - 1} for {len(names)} "
                            "classes")
    return names


def _resized(xs: list[torch.Tensor], size: int, fit: str, val_is_test: bool) -> list[torch.Tensor]:
    if xs[0].ndim != 4:
        raise UserError(f"image_size: resizing needs images of channels x height x width, got examples of shape "
                        f"{_dims(xs[0].shape[1:])}")
    images = sum(len(x) for x in xs) - (len(xs[1]) if val_is_test else 0)
    channels = xs[0].shape[1]
    check_fits(images * channels * size * size * 4, "image_size", f"{images} images of {channels}x{size}x{size} "
               "float32")
    train, test = _fit_size(xs[0], size, fit), _fit_size(xs[2], size, fit)
    return [train, test if val_is_test else _fit_size(xs[1], size, fit), test]


def _dims(shape) -> str:
    return "x".join(str(d) for d in shape)


def describe_datasets(path: Optional[str] = None) -> list[dict]:
    """For `relulab datasets`: each dataset, whether its files are found, and where."""
    rows = []
    for name in LOADERS:
        if name in BUILT_IN:
            rows.append({"dataset": name, "found": True, "where": "built in"})
            continue
        if name == "image-folder":
            rows.append({"dataset": name, "found": None, "where": "needs --data-path (folder, .zip or .tar.gz)"})
            continue
        searched = sources.search_dirs(name, path)
        hits = [str(d) for d in searched if _idx_paths(d) or any(c.exists() for c in _cifar_candidates(d)[:4])]
        rows.append({"dataset": name, "found": bool(hits),
                     "where": hits[0] if hits else "searched " + ", ".join(str(d) for d in searched)})
    rows.append({"dataset": PYTHON, "found": None, "where": "data by reference: a spec's data.target "
                 "('module:function' or 'file.py:function') returns the datasets"})
    return rows
