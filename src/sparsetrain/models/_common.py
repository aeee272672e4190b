"""Helpers shared by the model definitions: width scaling and data set facts."""

from __future__ import annotations

from typing import Protocol


class InputSpec(Protocol):
    """What a model needs to know about its data set (`sparsetrain.data.DatasetInfo` fits)."""

    in_channels: int
    image_size: tuple[int, int]
    num_classes: int


def scaled(channels: int, width: float) -> int:
    """`channels * width` rounded half up, never below one channel.

    Used for every hidden width/channel count; the input channels and the classifier's
    outputs are never scaled.
    """
    return max(1, int(channels * width + 0.5))
