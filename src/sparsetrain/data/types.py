"""Containers shared by the data loaders."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from sparsetrain.data.info import DatasetInfo


@dataclass
class RawData:
    """A data set as read from disk: uint8 (N, C, H, W) images, int64 labels, CPU tensors."""

    info: DatasetInfo
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: tuple[str, ...] | None = None


@dataclass
class Splits:
    """Train / validation / test tensors on one device (images uint8 NCHW, labels int64).

    `val` is None when the validation split is 0. Turn a split into batches with
    `sparsetrain.data.Loader`, which normalises to float32.
    """

    info: DatasetInfo
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor] | None
    test: tuple[Tensor, Tensor]
    classes: tuple[str, ...] | None = None
