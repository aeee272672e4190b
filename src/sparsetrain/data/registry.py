"""The data-set registry: canonical names, aliases, static info and the file loader of each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sparsetrain.data import info as _info
from sparsetrain.data.cifar import load_cifar
from sparsetrain.data.digits import load_digits_dataset
from sparsetrain.data.folder import load_folder_dataset
from sparsetrain.data.idx import load_idx_dataset
from sparsetrain.data.info import DatasetInfo
from sparsetrain.data.types import RawData
from sparsetrain.registry import Registry

LoadFn = Callable[..., RawData]  # (name, root, *, download, verify) -> RawData


@dataclass(frozen=True)
class DatasetSpec:
    info: DatasetInfo
    load: LoadFn


DATASETS: Registry[DatasetSpec] = Registry("dataset")
DATASETS.add("FashionMNIST", DatasetSpec(_info.FASHION_MNIST, load_idx_dataset), "Fashion-MNIST")
DATASETS.add("MNIST", DatasetSpec(_info.MNIST, load_idx_dataset))
DATASETS.add("CIFAR10", DatasetSpec(_info.CIFAR10, load_cifar), "CIFAR-10")
DATASETS.add("CIFAR100", DatasetSpec(_info.CIFAR100, load_cifar), "CIFAR-100")
DATASETS.add("digits", DatasetSpec(_info.DIGITS, load_digits_dataset))
DATASETS.add(
    "Mini-Imagenet", DatasetSpec(_info.MINI_IMAGENET, load_folder_dataset), "Mini-ImageNet"
)
DATASETS.add("ImageNet", DatasetSpec(_info.IMAGENET, load_folder_dataset), "Imagenet")


def dataset_info(name: str) -> DatasetInfo:
    """Static facts of a data set; unknown names raise `ConfigError` listing the choices."""
    return DATASETS.get(name).info


def names() -> list[str]:
    """Canonical data-set names."""
    return DATASETS.names()
