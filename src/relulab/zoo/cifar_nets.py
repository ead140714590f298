"""The CIFAR networks of the literature, written out: ResNet-20, the CIFAR ResNet-18, VGG-16 with batch norm.

- `resnet20` (He et al. 2016, "Deep Residual Learning", section 4.2): a 3x3 conv of 16 + BN + ReLU, then 3
  stages of 3 basic blocks of 16, 32, 64 channels (the first block of stages 2 and 3 strides 2), option A
  shortcuts (parameter-free: subsample by 2 and pad the new channels with zeros), global average pool, one
  Linear. 272,474 parameters for 10 classes: the paper's Table 6 says 0.27M.
- `resnet18-cifar` (the variant of kuangliu/pytorch-cifar, models/resnet.py, which EASIER and SNL train): a
  3x3 conv of 64 + BN + ReLU with no max-pool, 4 stages of 2 basic blocks of 64, 128, 256, 512 channels,
  1x1 conv + BN projection shortcuts where the shape changes, average pool, one Linear. 11,173,962 parameters
  for 10 classes (kuangliu's README: 11.17M).
- `vgg16-bn` (kuangliu/pytorch-cifar, models/vgg.py): 13 3x3 conv + BN + ReLU (with bias, as there) in 5
  groups, each group ending in a 2x2 max-pool, then the common CIFAR head: a single Linear(512, classes).
  14,728,266 parameters for 10 classes.

Each activation is made by `act(index)`, numbered from 1 in the order the data meets it (the stem's first; in
a block, the one after the first conv, then the one after the sum), and created in that order, so
`model.modules()` meets them in the same order. This module is only the architectures: the registry entries
(relulab.zoo.models) pass in the activation slots, the batch norm and the initializers.

The modules are named after torchvision's and kuangliu/pytorch-cifar's (`layer1`, ..., and in a block `conv1`,
`bn1`, `conv2`, `bn2`, `shortcut`), with the first conv in a `stem` and each activation a module of its own, so
that a slot's module path reads back to the code (relulab.zoo.models names each slot by its path, as
relulab.slotify does):

- ResNets: `stem.relu` (after the 3x3 stem conv), then per block `layer<stage>.<block>.relu1` (after the first
  conv) and `layer<stage>.<block>.relu2` (after the sum): resnet20's 19 are `stem.relu`, `layer1.0.relu1`,
  `layer1.0.relu2`, ..., `layer3.2.relu2`;
- VGG: `features.conv<n>.relu` after the n-th conv (1..13); `features.pool<g>` ends group g.

Where the final feature map is larger than 1x1 (inputs above 32x32), an adaptive average pool takes it to 1x1,
as ResNet's global pool does; at 32x32 VGG's map is already 1x1 and the pool does nothing.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from relulab.core.errors import UserError

Act = Callable[[int], nn.Module]  # slot index -> the activation module at that place
Norm = Callable[[int], nn.Module]  # channels -> a batch norm

MIN_SIZE = 32  # every net here is built for CIFAR's 32x32: VGG's five pools need at least that much

RESNET20_WIDTHS = [16, 32, 64]
RESNET20_BLOCKS = 3  # per stage: 6n + 2 layers with n = 3
RESNET18_WIDTHS = [64, 128, 256, 512]
RESNET18_BLOCKS = 2
VGG16_WIDTHS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
VGG16_GROUPS = [2, 2, 3, 3, 3]  # convs between max-pools


class _Counter:
    """Hands out slot numbers 1, 2, ... in the order the layers are built (which is the order of `forward`)."""

    def __init__(self, act: Act):
        self.act, self.next = act, 1

    def __call__(self) -> nn.Module:
        module = self.act(self.next)
        self.next += 1
        return module


class PadShortcut(nn.Module):
    """ResNet's option A shortcut: keep every `stride`-th pixel, and pad the added channels with zeros (half
    before, half after, as akamaster/pytorch_resnet_cifar10 does). It holds no parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride, self.before = stride, (out_channels - in_channels) // 2
        self.after = out_channels - in_channels - self.before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.before, self.after))


class ConvBN(nn.Module):
    """conv3x3 - BN - act: the ResNets' stem and every VGG layer (one slot, `relu`)."""

    def __init__(self, in_channels: int, out_channels: int, slot: _Counter, norm: Norm, bias: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)
        self.bn = norm(out_channels)
        self.relu = slot()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """conv3x3 - BN - act - conv3x3 - BN, plus the shortcut, then act: two slots, `relu1` and `relu2`."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, slot: _Counter, norm: Norm,
                 shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = norm(out_channels)
        self.relu1 = slot()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = norm(out_channels)
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm, shortcut)
        self.relu2 = slot()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: Norm, kind: str) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    if kind == "pad":
        return PadShortcut(in_channels, out_channels, stride)
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), norm(out_channels))


class CifarResNet(nn.Module):
    """A 3x3 stem, stages of basic blocks (`layer1`, `layer2`, ...; every stage after the first halves the size),
    pool, Linear."""

    def __init__(self, in_channels: int, num_classes: int, widths: list[int], blocks: int, act: Act, norm: Norm,
                 shortcut: str):
        super().__init__()
        slot = _Counter(act)
        self.stem = ConvBN(in_channels, widths[0], slot, norm, bias=False)
        self.stages, channels = [], widths[0]
        for stage, width in enumerate(widths, start=1):
            strides = [1 if stage == 1 else 2] + [1] * (blocks - 1)
            layers = []
            for stride in strides:
                layers.append(BasicBlock(channels, width, stride, slot, norm, shortcut))
                channels = width
            self.stages.append(f"layer{stage}")
            self.add_module(f"layer{stage}", nn.Sequential(*layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(x)
        for name in self.stages:
            out = getattr(self, name)(out)
        return self.fc(torch.flatten(self.pool(out), 1))


class VGG(nn.Module):
    """Groups of conv3x3 (with bias) - BN - act (`features.conv1`, ...), a 2x2 max-pool after each group
    (`features.pool1`, ...), pool to 1x1, Linear."""

    def __init__(self, in_channels: int, num_classes: int, widths: list[int], groups: list[int], act: Act,
                 norm: Norm):
        super().__init__()
        slot, layers, convs = _Counter(act), OrderedDict(), 0
        for group, size in enumerate(groups, start=1):
            for _ in range(size):
                width = widths[convs]
                convs += 1
                layers[f"conv{convs}"] = ConvBN(in_channels, width, slot, norm, bias=True)
                in_channels = width
            layers[f"pool{group}"] = nn.MaxPool2d(2)
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def image_channels(name: str, input_shape: tuple) -> int:
    """The channel count of image input (C, H, W) of at least 32x32; anything else is a UserError."""
    if len(input_shape) != 3:
        raise UserError(f"model: {name} needs image input (channels, height, width), got shape {tuple(input_shape)}")
    channels, height, width = input_shape
    if min(height, width) < MIN_SIZE:
        raise UserError(f"data.image_size: {name} needs images of at least {MIN_SIZE}x{MIN_SIZE}, got "
                        f"{height}x{width}; resize or pad them to {MIN_SIZE} (image_size)")
    return channels


def check_widths(name: str, widths: Optional[list[int]], default: list[int], what: str) -> list[int]:
    """`widths` or the model's own; a list of another length is a UserError naming model.widths."""
    if widths is None:
        return list(default)
    if len(widths) != len(default):
        raise UserError(f"model.widths: {name} takes {len(default)} widths ({what}), got {len(widths)}")
    return list(widths)


def resnet20(in_channels: int, num_classes: int, act: Act, norm: Norm, widths: Optional[list[int]] = None
             ) -> CifarResNet:
    widths = check_widths("resnet20", widths, RESNET20_WIDTHS, "one a stage")
    if any(b < a for a, b in zip(widths, widths[1:])):
        raise UserError(f"model.widths: resnet20's option A shortcuts can only add channels from stage to stage,"
                        f" got {widths}")
    return CifarResNet(in_channels, num_classes, widths, RESNET20_BLOCKS, act, norm, shortcut="pad")


def resnet18_cifar(in_channels: int, num_classes: int, act: Act, norm: Norm,
                   widths: Optional[list[int]] = None) -> CifarResNet:
    widths = check_widths("resnet18-cifar", widths, RESNET18_WIDTHS, "one a stage")
    return CifarResNet(in_channels, num_classes, widths, RESNET18_BLOCKS, act, norm, shortcut="conv")


def vgg16_bn(in_channels: int, num_classes: int, act: Act, norm: Norm, widths: Optional[list[int]] = None) -> VGG:
    widths = check_widths("vgg16-bn", widths, VGG16_WIDTHS, "one a conv")
    return VGG(in_channels, num_classes, widths, VGG16_GROUPS, act, norm)


SLOT_COUNTS = {"resnet20": 1 + 2 * RESNET20_BLOCKS * len(RESNET20_WIDTHS),
               "resnet18-cifar": 1 + 2 * RESNET18_BLOCKS * len(RESNET18_WIDTHS),
               "vgg16-bn": len(VGG16_WIDTHS)}


@torch.no_grad()
def literature_init(model: nn.Module) -> None:
    """The initialization these nets are trained with: every conv He normal on fan_out (std sqrt(2 / fan_out),
    not truncated: torchvision's ResNet and VGG) with zero biases, every batch norm weight 1 and bias 0, the
    Linear classifier PyTorch's default (kuangliu/pytorch-cifar leaves it so). A model on the meta device is left
    as it is, as `relulab.zoo.init.initialize` leaves meta tensors: no values to draw, and drawing them there
    imports torch._dynamo (seconds)."""
    if any(p.is_meta for p in model.parameters()):
        return
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            module.reset_parameters()
