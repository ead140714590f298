"""Which elements of a slot stay nonlinear: masks at the granularities of the ReLU-reduction literature.

A slot can be switched off as a whole (`layer`: its activation becomes the identity, `model.slots`), per channel
(`channel`: the same channels of every feature-map position stay nonlinear), or per unit (`unit`: each
channel x position on its own, the setting of SNL, Cho et al. 2022). A slot with a mask computes

    keep * act(x) + (1 - keep) * x

with `keep` 0 or 1 for each element (relulab.zoo.models.Slot), so its ReLU count, the activation elements per
example that stay nonlinear, is the kept channels times the positions of each, or the kept units.

Masks travel in the spec (`model.masks: {slot: text}`), so a run's key says which elements were kept and a
masked run trains anywhere (a Ray worker, a resumed run) from its spec alone. The text is
`GRANULARITY:SHAPE:BITS`, e.g. `channel:16:<bits>` or `unit:16x32x32:<bits>`, BITS the mask's elements in C
order packed eight to a byte (numpy.packbits), zlib-compressed and base64-encoded: a resnet20 unit mask of
16 x 32 x 32 elements is about 3 KB of text.
"""
from __future__ import annotations

import base64
import binascii
import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from relulab.core.errors import UserError, unknown_choice

GRANULARITIES = ("layer", "channel", "unit")
MASKED = ("channel", "unit")  # the granularities a mask says (layer is a slot's activation, on or identity)


@dataclass(frozen=True)
class Mask:
    """One slot's kept elements: a bool tensor of `shape` (channel: (C,); unit: the slot's output for one
    example, (C, H, W) or (C,))."""

    granularity: str
    keep: torch.Tensor

    def text(self) -> str:
        """The mask as `model.masks` holds it (module docstring)."""
        bits = np.packbits(self.keep.detach().to("cpu", torch.bool).numpy().reshape(-1))
        shape = "x".join(map(str, self.keep.shape))
        return f"{self.granularity}:{shape}:{base64.b64encode(zlib.compress(bits.tobytes(), 9)).decode()}"

    @property
    def kept(self) -> int:
        return int(self.keep.sum())


def parse_mask(text, field: str = "model.masks") -> Mask:
    """A mask from its text; a UserError naming `field` where the text is not one."""
    if not isinstance(text, str) or text.count(":") != 2:
        raise UserError(f"{field}: expected GRANULARITY:SHAPE:BITS (relulab.zoo.masks), got {str(text)[:60]!r}")
    granularity, shape_text, bits_text = text.split(":")
    if granularity not in MASKED:
        raise unknown_choice(f"{field}: granularity", granularity, MASKED)
    try:
        shape = tuple(int(n) for n in shape_text.split("x"))
    except ValueError:
        shape = ()
    if not shape or any(n < 1 for n in shape) or (granularity == "channel" and len(shape) != 1):
        raise UserError(f"{field}: expected a shape such as 16 (channel) or 16x32x32 (unit), got {shape_text!r}")
    count = math.prod(shape)
    try:
        raw = np.frombuffer(zlib.decompress(base64.b64decode(bits_text, validate=True)), dtype=np.uint8)
    except (binascii.Error, zlib.error, ValueError):
        raise UserError(f"{field}: the bits are not base64 of zlib-compressed packed bits") from None
    if len(raw) != (count + 7) // 8:
        raise UserError(f"{field}: {len(raw) * 8} bits for a shape of {count} elements")
    keep = torch.from_numpy(np.unpackbits(raw)[:count].astype(bool)).reshape(shape)
    return Mask(granularity, keep)


def gate_shape(granularity: str, out_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of a slot's gates at `granularity`, for a slot whose output for one example is `out_shape`."""
    return {"layer": (1,), "channel": tuple(out_shape[:1]), "unit": tuple(out_shape)}[granularity]


def element_cost(granularity: str, out_shape: tuple[int, ...]) -> int:
    """ReLUs per example that one gate of `granularity` keeps nonlinear (a whole slot, a channel's positions,
    one unit)."""
    return {"layer": math.prod(out_shape), "channel": math.prod(out_shape[1:]), "unit": 1}[granularity]


def broadcast_keep(mask: Mask, out_shape: tuple[int, ...], field: str) -> torch.Tensor:
    """The mask as a float tensor that multiplies a batch of the slot's outputs (channel: (C, 1, 1)); a UserError
    naming `field` where it does not fit a slot whose output for one example is `out_shape`."""
    want = gate_shape(mask.granularity, out_shape)
    if tuple(mask.keep.shape) != want:
        shape = "x".join(map(str, want))
        raise UserError(f"{field}: a {mask.granularity} mask of this slot has shape {shape} (its output is "
                        f"{'x'.join(map(str, out_shape))} per example), got {'x'.join(map(str, mask.keep.shape))}")
    keep = mask.keep.float()
    return keep.reshape(*keep.shape, *[1] * (len(out_shape) - keep.dim()))
