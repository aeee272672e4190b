"""Wide Residual Network (Zagoruyko & Komodakis 2016) as in the RigL CIFAR-10 experiments.

Pre-activation basic blocks, no conv biases, dropout 0.3 between a block's two convolutions,
channels 16 -> 16k -> 32k -> 64k (k = widen factor; WRN-22-2: 16 -> 32 -> 64 -> 128), global
average pooling and a linear classifier. The forward pass returns `log_softmax` like the
reference implementation (cross-entropy on log-probabilities equals cross-entropy on logits).

Parameter names equal the reference's, so its checkpoints' `model` state dicts load:
`conv1`, `block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2}`, `block{1,2,3}.layer.0.convShortcut`,
`bn1`, `fc`. WRN-22-2 has 23 masked weight tensors (1 stem + 18 block convs + 3 shortcuts + fc).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain.errors import ConfigError
from sparsetrain.models._common import InputSpec, scaled


class BasicBlock(nn.Module):
    """bn-relu-conv3x3-bn-relu-dropout-conv3x3 plus the (projected) input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.convShortcut = (  # reference name
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        # As in the reference: when the shape changes, the shortcut sees the activated input.
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float):
        super().__init__()
        self.layer = nn.Sequential(
            *(
                BasicBlock(in_planes if i == 0 else out_planes, out_planes,
                           stride if i == 0 else 1, drop_rate)
                for i in range(n)
            )
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(
        self,
        depth: int = 22,
        widen_factor: int = 2,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_rate: float = 0.3,
        width: float = 1.0,
    ):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ConfigError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        channels = [scaled(c, width) for c in (16, 16 * widen_factor, 32 * widen_factor,
                                               64 * widen_factor)]  # fmt: skip
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.fc = nn.Linear(channels[3], num_classes)
        for m in self.modules():  # the reference initialisation
            if any(p.is_meta for p in m.parameters(recurse=False)):
                continue  # shape-only model (e.g. Small_Dense width search): nothing to fill
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        # Global average pooling (the reference's avg_pool2d(8) on 32x32 inputs; any size here).
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return F.log_softmax(self.fc(out), dim=1)


def wrn_22_2(info: InputSpec, width: float = 1.0, drop_rate: float = 0.3) -> nn.Module:
    return WideResNet(22, 2, info.num_classes, info.in_channels, drop_rate, width)
