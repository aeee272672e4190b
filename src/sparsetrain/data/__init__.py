"""Data sets as tensors on the device, and a loader that batches them by index permutation.

    info = dataset_info("FashionMNIST")                       # static facts, no files
    splits = load_splits("FashionMNIST", root, validation_split=0.1, split_seed=0)
    train = Loader(*splits.train, 128, shuffle=True, augment=info.augment, info=info, seed=0)
    for x, y in train.epoch(epoch):                           # float32 NCHW, int64
        ...

No torchvision: IDX (MNIST, Fashion-MNIST), CIFAR python pickles, class-per-folder image trees
(Mini-Imagenet, ImageNet) and scikit-learn's digits are read here. See `_files` for where files
are looked for and downloaded, and `loader` for ordering, resume and multi-rank sharding.
"""

from sparsetrain.data.info import DatasetInfo
from sparsetrain.data.loader import AUGMENTATIONS, Loader, augment_batch, epoch_seed
from sparsetrain.data.registry import DATASETS, dataset_info, names
from sparsetrain.data.splits import load_splits, split_indices
from sparsetrain.data.types import RawData, Splits

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "DatasetInfo",
    "Loader",
    "RawData",
    "Splits",
    "augment_batch",
    "dataset_info",
    "epoch_seed",
    "load_splits",
    "names",
    "split_indices",
]
