"""A residual user network for the tests that slotify one: torchvision's BasicBlock shape with a shared in-place
ReLU module, F.relu after the stem and a tanh hidden layer (6 slots), and a relulab model builder for it."""
import torch
import torch.nn.functional as F
from torch import nn

from relulab.zoo.models import ModelSpec
from relulab.zoo.slotify import slotify


class Block(nn.Module):
    """torchvision's BasicBlock shape: one ReLU module, in place, used after the first conv and after the sum."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class UserNet(nn.Module):
    """F.relu after the stem, two residual blocks (4 slots), a tanh hidden layer: 6 slots."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.layer1 = nn.Sequential(Block(4), Block(4))
        self.fc, self.out = nn.Linear(4, 16), nn.Linear(16, classes)

    def forward(self, x):
        x = self.layer1(F.relu(self.conv(x)))
        return self.out(torch.tanh(self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))))


def build_user_net(spec: ModelSpec, input_shape, num_classes: int):
    model = slotify(UserNet(input_shape[0], num_classes), torch.zeros(2, *input_shape))
    model.set_slots(spec.slots)
    return model
