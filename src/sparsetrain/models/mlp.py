"""A plain multi-layer perceptron with configurable hidden widths (ReLU; returns logits)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from sparsetrain.errors import ConfigError
from sparsetrain.models._common import InputSpec, scaled

DEFAULT_HIDDEN = (1000, 1000)


class MLP(nn.Module):
    """Flatten, then Linear+ReLU for every hidden width, then a Linear classifier.

    Parameter names: `layers.0`, `layers.1`, ... (the last one is the classifier).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        width: float = 1.0,
    ):
        super().__init__()
        if any(int(h) < 1 for h in hidden):
            raise ConfigError(f"mlp hidden widths must be positive integers, got {tuple(hidden)}")
        sizes = [in_features, *(scaled(int(h), width) for h in hidden), num_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


def mlp(info: InputSpec, width: float = 1.0, hidden: Sequence[int] = DEFAULT_HIDDEN) -> nn.Module:
    h, w = info.image_size
    return MLP(info.in_channels * h * w, info.num_classes, hidden, width)
