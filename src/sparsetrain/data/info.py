"""Static facts about every supported data set (no files needed).

Model building and FLOPs counting only need `dataset_info(name)`; the loaders in this package
fill the same `DatasetInfo` from the files on disk.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """Shape, classes and normalisation of one data set.

    `mean`/`std` are per channel on the [0, 1] scale. `augment` names the default training
    augmentation (see `sparsetrain.data.loader.AUGMENTATIONS`), None for none. `num_train` and
    `num_test` count the official train (before any validation split) and test examples, None
    when they depend on how the files were prepared.
    """

    name: str
    in_channels: int
    image_size: tuple[int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_train: int | None
    augment: str | None = None
    num_test: int | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one example, as models and the FLOPs tracer want it."""
        return (self.in_channels, *self.image_size)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

FASHION_MNIST = DatasetInfo(
    # mean/std measured on the 60,000 training images
    name="FashionMNIST",
    in_channels=1,
    image_size=(28, 28),
    num_classes=10,
    mean=(0.2860,),
    std=(0.3530,),
    num_train=60_000,
    num_test=10_000,
)
MNIST = DatasetInfo(
    name="MNIST",
    in_channels=1,
    image_size=(28, 28),
    num_classes=10,
    mean=(0.1307,),
    std=(0.3081,),
    num_train=60_000,
    num_test=10_000,
)
CIFAR10 = DatasetInfo(
    # the reference system's normalisation (its std is the per-pixel one of the common recipe)
    name="CIFAR10",
    in_channels=3,
    image_size=(32, 32),
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2023, 0.1994, 0.2010),
    num_train=50_000,
    augment="crop_flip",
    num_test=10_000,
)
CIFAR100 = DatasetInfo(
    name="CIFAR100",
    in_channels=3,
    image_size=(32, 32),
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    num_train=50_000,
    augment="crop_flip",
    num_test=10_000,
)
DIGITS = DatasetInfo(
    # scikit-learn's 1,797 8x8 digits; fixed 1,438 / 359 train/test split (see digits.py);
    # mean/std measured on all images after scaling 0..16 to 0..255
    name="digits",
    in_channels=1,
    image_size=(8, 8),
    num_classes=10,
    mean=(0.3053,),
    std=(0.3759,),
    num_train=1_438,
    num_test=359,
)
MINI_IMAGENET = DatasetInfo(
    # class-per-folder tree (train_val/ and test/, as the reference system prepares it)
    name="Mini-Imagenet",
    in_channels=3,
    image_size=(84, 84),
    num_classes=100,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    num_train=None,
    augment="crop_flip",
)
IMAGENET = DatasetInfo(
    name="ImageNet",
    in_channels=3,
    image_size=(224, 224),
    num_classes=1000,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    num_train=1_281_167,
    augment="crop_flip",
    num_test=50_000,
)
