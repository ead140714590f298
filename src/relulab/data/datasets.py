"""The user's data as tensors: a map-style `torch.utils.data.Dataset` (a TensorDataset, a torchvision dataset,
one's own returning (image, label)) or an `(x, y)` pair of arrays or tensors, stacked once into float32 images
and int64 labels (`Splits.from_datasets` splits and scales them).

An image may be a tensor, a numpy array (both taken as laid out: channels first for images) or a PIL image
(height x width [x channels], turned channels first). uint8 images are pixels and are divided by 255, as
`load_data` scales its datasets; other numbers are kept as they are. Each label is one integer.
Errors name the argument (`train`, `val`, `test`) and, for a dataset, the index of the example.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

from relulab.core.errors import UserError
from relulab.core.util import check_fits

FIELDS = ("train", "val", "test")


def to_tensors(source: Any, field: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images as float32 N x ..., labels as int64 N) from a map-style dataset or an (x, y) pair of arrays."""
    if isinstance(source, torch.utils.data.TensorDataset) and len(source.tensors) == 2:
        return _from_arrays(*source.tensors, field)  # its tensors as they are: no example-by-example copy
    if isinstance(source, (tuple, list)) and len(source) == 2 and all(_is_array(a) for a in source):
        return _from_arrays(*source, field)
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
        raise UserError(f"{field}: expected a map-style Dataset (with __len__ and __getitem__) or an (x, y) pair "
                        f"of arrays, got {type(source).__name__}")
    return _from_dataset(source, field)


def _is_array(a) -> bool:
    return isinstance(a, (np.ndarray, torch.Tensor))


def _from_arrays(x, y, field: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    if x.ndim < 2:
        raise UserError(f"{field}: x is of shape {tuple(x.shape)}; expected one row per example (N x ...)")
    if y.ndim != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise UserError(f"{field}: labels are {y.dtype} of shape {tuple(y.shape)}; expected one integer per example")
    if len(y) != len(x):
        raise UserError(f"{field}: {len(y)} labels for {len(x)} examples")
    if len(x) == 0:
        raise UserError(f"{field}: the dataset is empty")
    _check_kind(x.dtype, field)
    check_fits(x.numel() * 4 + len(y) * 8, field, f"{len(x)} examples of {_shape(x.shape[1:])} as float32")
    return _scaled(x), y.long()


def _from_dataset(dataset, field: str) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(dataset)
    if n == 0:
        raise UserError(f"{field}: the dataset is empty")
    first, label = _example(dataset, 0, field)
    shape, dtype = first.shape, first.dtype
    check_fits(n * first.numel() * 4 + n * 8, field, f"{n} examples of {_shape(shape)} as float32")
    x = torch.empty((n, *shape), dtype=torch.float32)
    y = torch.empty(n, dtype=torch.int64)
    x[0], y[0] = _scaled(first), label
    for i in range(1, n):
        image, y[i] = _example(dataset, i, field)
        if image.shape != shape:
            raise UserError(f"{field}[{i}]: an example of shape {_shape(image.shape)}, expected {_shape(shape)} like "
                            f"{field}[0]")
        if image.dtype != dtype:
            raise UserError(f"{field}[{i}]: an example of {image.dtype}, expected {dtype} like {field}[0]")
        x[i] = _scaled(image)
    return x, y


def _example(dataset, i: int, field: str) -> tuple[torch.Tensor, int]:
    item = dataset[i]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise UserError(f"{field}[{i}]: expected an (image, label) pair, got {type(item).__name__}")
    image, label = item
    return _image(image, f"{field}[{i}]"), _label(label, f"{field}[{i}]")


def _image(image, where: str) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        tensor = image
    elif isinstance(image, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(image))
    elif hasattr(image, "getbands"):  # a PIL image: height x width [x channels]
        pixels = np.asarray(image)
        tensor = torch.from_numpy(np.ascontiguousarray(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)))
    else:
        raise UserError(f"{where}: the image is a {type(image).__name__}; expected a tensor, a numpy array or a PIL "
                        "image")
    _check_kind(tensor.dtype, where)
    return tensor


def _check_kind(dtype: torch.dtype, where: str) -> None:
    if dtype == torch.bool or dtype.is_complex:
        raise UserError(f"{where}: the images are {dtype}; expected numbers (uint8 pixels or floats)")


def _label(label, where: str) -> int:
    if isinstance(label, (torch.Tensor, np.ndarray)) and label.ndim == 0:
        label = label.item()
    if isinstance(label, numbers.Integral) and not isinstance(label, (bool, np.bool_)):
        return int(label)
    raise UserError(f"{where}: the label {label!r} is not an integer class")


def _scaled(x: torch.Tensor) -> torch.Tensor:
    """float32; uint8 pixels divided by 255 (load_data's default scaling)."""
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


def _shape(shape) -> str:
    return "x".join(str(d) for d in shape) or "a scalar"


# ---------------------------------------------------------------- a training set streamed rather than stacked


def resident_bytes(source: Any, field: str) -> int:
    """What stacking `source` as float32 examples and int64 labels would take (reads one example); 0 for what
    to_tensors refuses (empty, not a dataset), so that its error is the one given."""
    if isinstance(source, (tuple, list)) and len(source) == 2 and all(_is_array(a) for a in source):
        x = source[0]
        return (x.size if isinstance(x, np.ndarray) else x.numel()) * 4 + len(source[1]) * 8
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")) or len(source) == 0:
        return 0
    first, _ = _example(source, 0, field)
    return len(source) * (first.numel() * 4 + 8)


class StreamedExamples(torch.utils.data.Dataset):
    """The examples of `source` (those at `indices`, if given) one at a time, as `to_tensors` stacks them:
    float32, uint8 pixels divided by 255, the label an int. A DataLoader fetches the batches from it."""

    def __init__(self, source: Any, field: str, indices: Any = None):
        self.source, self.field = _as_dataset(source, field), field
        self.indices = None if indices is None else [int(i) for i in indices]
        image, _ = _example(self.source, self._at(0), field)
        self.shape, self.dtype = image.shape, image.dtype

    def _at(self, i: int) -> int:
        return i if self.indices is None else self.indices[i]

    def __len__(self) -> int:
        return len(self.source) if self.indices is None else len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = self._at(i)
        image, label = _example(self.source, j, self.field)
        if image.shape != self.shape or image.dtype != self.dtype:
            raise UserError(f"{self.field}[{j}]: an example of {image.dtype} {_shape(image.shape)}, expected "
                            f"{self.dtype} {_shape(self.shape)} like the first")
        return _scaled(image), label

    def subset(self, keep: torch.Tensor) -> "StreamedExamples":
        """These examples at positions `keep` (a stratified split's part)."""
        return StreamedExamples(self.source, self.field, [self._at(int(i)) for i in keep])

    def stacked(self, positions: Any, field: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The examples at `positions`, stacked (a held-out split, a probe set): refused if they would not fit."""
        positions = [int(i) for i in positions]
        check_fits(len(positions) * (math.prod(self.shape) * 4 + 8), field,
                   f"{len(positions)} examples of {_shape(self.shape)} as float32")
        if not positions:
            return torch.zeros((0, *self.shape)), torch.zeros(0, dtype=torch.int64)
        items = [self[i] for i in positions]
        return torch.stack([x for x, _ in items]), torch.tensor([label for _, label in items], dtype=torch.int64)


def streamed_labels(examples: StreamedExamples) -> torch.Tensor:
    """Every label, read once (one pass over the dataset, which also checks every example's shape), as int64."""
    if isinstance(examples.source, torch.utils.data.TensorDataset) and examples.indices is None:
        y = examples.source.tensors[1]
        if y.ndim != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise UserError(f"{examples.field}: labels are {y.dtype} of shape {tuple(y.shape)}; expected one integer "
                            "per example")
        return y.long()
    return torch.tensor([examples[i][1] for i in range(len(examples))], dtype=torch.int64)


def _as_dataset(source: Any, field: str):
    """`source` as a map-style dataset: an (x, y) pair of arrays becomes a TensorDataset."""
    if isinstance(source, (tuple, list)) and len(source) == 2 and all(_is_array(a) for a in source):
        x, y = torch.as_tensor(source[0]), torch.as_tensor(source[1])
        if len(y) != len(x) or x.ndim < 2 or len(x) == 0:
            return _from_arrays(x, y, field)  # its one-line error
        return torch.utils.data.TensorDataset(x, y)
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
        raise UserError(f"{field}: expected a map-style Dataset (with __len__ and __getitem__) or an (x, y) pair "
                        f"of arrays, got {type(source).__name__}")
    if len(source) == 0:
        raise UserError(f"{field}: the dataset is empty")
    return source
