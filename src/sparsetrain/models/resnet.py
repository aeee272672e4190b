"""ResNet-50: the reference's CIFAR variant and the standard ImageNet network (both return logits).

`resnet50` (CIFAR): 3x3 stem conv (stride 1, no max-pool), bottleneck stages of [3, 4, 6, 3]
blocks with widths 64/128/256/512 (x4 out), the stride on the 3x3 conv (1/2/2/2), a 1x1 conv + BN
shortcut where the shape changes, global average pooling, fc. Parameter names match the
reference: `conv1.0`, `conv{2,3,4,5}_x.<i>.residual_function.{0,3,6}` (convs; BNs at 1, 4, 7),
`conv{2..5}_x.<i>.shortcut.{0,1}`, `fc`.

`resnet50-imagenet`: the torchvision-style ResNet-50 (v1.5: stride on the 3x3 conv) for
224x224 inputs: 7x7/2 stem + 3x3/2 max-pool, `layer{1..4}.<i>.{conv1,bn1,conv2,bn2,conv3,bn3}`,
`layer{1..4}.0.downsample.{0,1}`, `fc` (25,557,032 parameters at 1000 classes).
"""

from __future__ import annotations

import torch
from torch import nn

from sparsetrain.models._common import InputSpec, scaled

STAGES = (3, 4, 6, 3)
EXPANSION = 4


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if any(p.is_meta for p in m.parameters(recurse=False)):
            continue  # shape-only model (e.g. Small_Dense width search): nothing to fill
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- CIFAR variant
class CifarBottleneck(nn.Module):
    def __init__(self, in_channels: int, planes: int, stride: int):
        super().__init__()
        out = planes * EXPANSION
        self.residual_function = nn.Sequential(
            nn.Conv2d(in_channels, planes, 1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, out, 1, bias=False),
            nn.BatchNorm2d(out),
        )
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.residual_function(x) + self.shortcut(x))


def _bottleneck_stages(
    block: type[nn.Module], channels: int, width: float
) -> tuple[list[nn.Sequential], int]:
    """The four ResNet-50 stages ([3, 4, 6, 3] bottlenecks, widths 64/128/256/512 × 4 out,
    stride on each stage's first block) shared by the CIFAR and ImageNet variants; returns the
    stages and the output channels."""
    stages = []
    for blocks, base, stride in zip(STAGES, (64, 128, 256, 512), (1, 2, 2, 2)):
        planes = scaled(base, width)
        layers = []
        for i in range(blocks):
            layers.append(block(channels, planes, stride if i == 0 else 1))
            channels = planes * EXPANSION
        stages.append(nn.Sequential(*layers))
    return stages, channels


class CifarResNet50(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 100, width: float = 1.0):
        super().__init__()
        stem = scaled(64, width)
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, stem, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
        )
        stages, channels = _bottleneck_stages(CifarBottleneck, stem, width)
        for index, stage in enumerate(stages, start=2):
            setattr(self, f"conv{index}_x", stage)
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.conv5_x(self.conv4_x(self.conv3_x(self.conv2_x(x))))
        return self.fc(torch.flatten(self.avg_pool(x), 1))


# --------------------------------------------------------------------------- ImageNet variant
class Bottleneck(nn.Module):
    def __init__(self, in_channels: int, planes: int, stride: int):
        super().__init__()
        out = planes * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ImageNetResNet50(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 1000, width: float = 1.0):
        super().__init__()
        stem = scaled(64, width)
        self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages, channels = _bottleneck_stages(Bottleneck, stem, width)
        for index, stage in enumerate(stages, start=1):
            setattr(self, f"layer{index}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(info: InputSpec, width: float = 1.0) -> nn.Module:
    return CifarResNet50(info.in_channels, info.num_classes, width)


def resnet50_imagenet(info: InputSpec, width: float = 1.0) -> nn.Module:
    return ImageNetResNet50(info.in_channels, info.num_classes, width)
