"""Augmentation of image batches on the device (`train.augment`): random crop with zero padding, horizontal flip.

    augment: {crop_padding: 4, flip: true}

The whole batch is augmented by index arithmetic, with no per-image host work and no loop over images: each
output pixel is read from the zero-padded batch at (row + dy, col + dx), its column mirrored where the image's
flip is drawn, in one gather. The offsets and flips are drawn from the run's generator (the one that shuffles
its batches), so a run repeats exactly and its seed decides them. Only training batches are augmented; the
validation and test sets are evaluated as they are. Padding is with zeros of the scaled data (black for
pixels / 255, the mean for `standardize`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from relulab.core.errors import UserError
from relulab.core.ranges import show_int


@dataclass
class AugmentSpec:
    crop_padding: int = 0  # pad by this many zeros on each side, then crop back to the size at a random offset
    flip: bool = False  # mirror left-right, each image with probability 1/2

    def validate(self, prefix: str = "train.augment") -> "AugmentSpec":
        if not isinstance(self.crop_padding, int) or isinstance(self.crop_padding, bool) or not \
                0 <= self.crop_padding <= 1024:
            shown = show_int(self.crop_padding) if isinstance(self.crop_padding, int) else repr(self.crop_padding)
            raise UserError(f"{prefix}.crop_padding: expected an integer from 0 to 1024, got {shown}")
        if not isinstance(self.flip, bool):
            raise UserError(f"{prefix}.flip: expected true or false, got {self.flip!r}")
        return self

    def check_data(self, shape: tuple, prefix: str = "train.augment") -> None:
        """Crops and flips need images: (N, C, H, W) data."""
        if len(shape) != 4:
            raise UserError(f"{prefix}: crop and flip need images (N, C, H, W); this data is {list(shape)}")


def augment_batch(x: torch.Tensor, spec: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """x (B, C, H, W), randomly cropped from its zero-padded self and flipped as `spec` says."""
    b, c, h, w = x.shape
    rows = torch.arange(h, device=x.device).expand(b, h)
    cols = torch.arange(w, device=x.device).expand(b, w)
    if spec.flip:  # mirror the columns read: the crop is flipped, as crop-then-flip does
        flipped = torch.rand(b, 1, device=x.device, generator=generator) < 0.5
        cols = torch.where(flipped, (w - 1) - cols, cols)
    if spec.crop_padding:
        pad = spec.crop_padding
        x = F.pad(x, (pad, pad, pad, pad))
        rows = rows + torch.randint(0, 2 * pad + 1, (b, 1), device=x.device, generator=generator)
        cols = cols + torch.randint(0, 2 * pad + 1, (b, 1), device=x.device, generator=generator)
    if not (spec.flip or spec.crop_padding):
        return x
    index = (rows[:, :, None] * x.shape[3] + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return x.flatten(2).gather(2, index).view(b, c, h, w)
