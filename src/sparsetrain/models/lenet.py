"""LeNet-300-100 and LeNet-5-Caffe (the SNFS paper's MNIST models). Both return logits."""

from __future__ import annotations

import torch
from torch import nn

from sparsetrain.models._common import InputSpec, scaled


class LeNet300100(nn.Module):
    """Fully connected 784-300-100-10 with ReLU; flattens any input (C*H*W features).

    Parameter names: `fc1`, `fc2`, `fc3`.
    """

    def __init__(self, in_features: int, num_classes: int, width: float = 1.0):
        super().__init__()
        h1, h2 = scaled(300, width), scaled(100, width)
        self.fc1 = nn.Linear(in_features, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5Caffe(nn.Module):
    """LeNet-5-Caffe: conv 20@5x5, max-pool 2, conv 50@5x5, max-pool 2, fc 500, fc 10 (ReLU).

    On 28x28 inputs the convolutions are 'valid' (28 -> 24 -> 12 -> 8 -> 4; 431,080 parameters
    for MNIST, as in Caffe). Inputs smaller than 16x16 (the 8x8 `digits` set) would vanish under
    valid convolutions, so there both convolutions use padding 2 ('same'): 8 -> 8 -> 4 -> 4 -> 2.
    The first fc layer's input size follows from the image size either way.

    Parameter names: `conv1`, `conv2`, `fc3`, `fc4`.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        num_classes: int,
        width: float = 1.0,
    ):
        super().__init__()
        c1, c2, h = scaled(20, width), scaled(50, width), scaled(500, width)
        pad = 0 if min(image_size) >= 16 else 2
        self.conv1 = nn.Conv2d(in_channels, c1, kernel_size=5, padding=pad)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5, padding=pad)
        height, width_px = image_size
        for _ in range(2):  # conv (k=5) then max-pool 2
            height, width_px = (height + 2 * pad - 4) // 2, (width_px + 2 * pad - 4) // 2
        self.fc3 = nn.Linear(c2 * height * width_px, h)
        self.fc4 = nn.Linear(h, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc3(torch.flatten(x, 1)))
        return self.fc4(x)


def lenet_300_100(info: InputSpec, width: float = 1.0) -> nn.Module:
    h, w = info.image_size
    return LeNet300100(info.in_channels * h * w, info.num_classes, width)


def lenet5(info: InputSpec, width: float = 1.0) -> nn.Module:
    return LeNet5Caffe(info.in_channels, tuple(info.image_size), info.num_classes, width)
