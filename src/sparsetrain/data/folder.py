"""Class-per-folder image trees (Mini-Imagenet, ImageNet), decoded with Pillow.

Layout: `<root>/<train dir>/<class>/<image>` and `<root>/<test dir>/<class>/<image>`, class
indices in sorted folder-name order (as torchvision's ImageFolder). Each image is converted to
RGB, resized on tensors so its shorter side is `resize` (bilinear, antialiased) and
center-cropped to `crop` x `crop`; the whole split is then held as one uint8 tensor. Mind the
memory: ImageNet at 224x224 needs ~190 GB this way (its entry exists for FLOPs and models).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sparsetrain.data import _files
from sparsetrain.data.info import IMAGENET, MINI_IMAGENET, DatasetInfo
from sparsetrain.data.types import RawData
from sparsetrain.errors import DataError

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".ppm",
    ".pgm",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
)


@dataclass(frozen=True)
class FolderLayout:
    info: DatasetInfo
    train_dirs: tuple[str, ...]  # first existing one is used
    test_dirs: tuple[str, ...]
    resize: int  # shorter side after resizing
    crop: int  # center crop
    how: str  # how to get the data (for the error message)


LAYOUTS: dict[str, FolderLayout] = {
    "Mini-Imagenet": FolderLayout(
        info=MINI_IMAGENET,
        train_dirs=("train_val", "train"),
        test_dirs=("test", "val"),
        resize=84,
        crop=84,
        how=(
            "build it with https://github.com/yaoyao-liu/mini-imagenet-tools and arrange it as "
            "<root>/train_val/<class>/*.jpg and <root>/test/<class>/*.jpg"
        ),
    ),
    "ImageNet": FolderLayout(
        info=IMAGENET,
        train_dirs=("train",),
        test_dirs=("val", "test"),
        resize=256,
        crop=224,
        how=(
            "download ILSVRC2012 from https://image-net.org and arrange it as "
            "<root>/train/<class>/*.JPEG and <root>/val/<class>/*.JPEG"
        ),
    ),
}


def decode_image(path: str | os.PathLike, resize: int, crop: int) -> torch.Tensor:
    """One image file -> uint8 (3, crop, crop): shorter side resized to `resize`, center crop."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from e
    x = torch.from_numpy(array.copy()).permute(2, 0, 1)  # (3, H, W)
    h, w = x.shape[1:]
    if min(h, w) != resize:
        scale = resize / min(h, w)
        size = (max(resize, round(h * scale)), max(resize, round(w * scale)))
        y = F.interpolate(
            x[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False
        )
        x = y[0].round_().clamp_(0, 255).to(torch.uint8)
        h, w = size
    if h < crop or w < crop:
        raise DataError(
            f"{path}: image of {h}x{w} after resizing is smaller than the {crop}x{crop} crop"
        )
    top, left = (h - crop) // 2, (w - crop) // 2
    return x[:, top : top + crop, left : left + crop].contiguous()


def list_images(directory: Path) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """Sorted (files, class indices, class names) of a class-per-folder tree."""
    classes = tuple(
        sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    )
    files, labels = [], []
    for index, cls in enumerate(classes):
        for root, dirnames, filenames in os.walk(directory / cls, followlinks=True):
            dirnames.sort()
            for fname in sorted(filenames):
                if fname.lower().endswith(IMAGE_EXTENSIONS) and not fname.startswith("."):
                    files.append(Path(root) / fname)
                    labels.append(index)
    return files, labels, classes


def load_image_folder(
    directory: str | os.PathLike,
    resize: int,
    crop: int,
    classes: tuple[str, ...] | None = None,
    threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Decode a class-per-folder tree into uint8 (N, 3, crop, crop) images and int64 labels.

    With `classes` given (the training classes), folder names map to those indices and an
    unknown class folder is an error.
    """
    directory = Path(directory)
    files, labels, found = list_images(directory)
    if classes is not None:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(
                f"{directory}: class folders {unknown} are not among the training classes"
            )
        index = {c: i for i, c in enumerate(classes)}
        labels = [index[found[label]] for label in labels]
    else:
        classes = found
    if not files:
        raise DataError(f"{directory}: no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders")
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        images = list(pool.map(lambda p: decode_image(p, resize, crop), files))
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), classes


def _first_dir(base: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        if (base / n).is_dir():
            return base / n
    return None


def load_folder_dataset(
    name: str, root: str | os.PathLike | None = None, *, download: bool = True, verify: bool = True
) -> RawData:
    """Load Mini-Imagenet / ImageNet from a class-per-folder tree (never downloaded).

    With `verify`, the number of training classes must match the data set's; with
    `verify=False` (small test trees) `info.num_classes` is taken from the folders.
    """
    del download  # these data sets are never downloaded automatically
    layout = LAYOUTS[name]
    dirs = _files.search_dirs(name, root)
    for base in dirs:
        train_dir = _first_dir(base, layout.train_dirs)
        test_dir = _first_dir(base, layout.test_dirs)
        if train_dir is not None and test_dir is not None:
            break
    else:
        wanted = f"{'/ or '.join(layout.train_dirs)}/ and {'/ or '.join(layout.test_dirs)}/"
        raise DataError(
            f"{name}: no image folders ({wanted}) in {_files.looked_in(dirs)}; {layout.how}"
        )
    train_x, train_y, classes = load_image_folder(train_dir, layout.resize, layout.crop)
    test_x, test_y, _ = load_image_folder(test_dir, layout.resize, layout.crop, classes)
    info = layout.info
    if len(classes) != info.num_classes:
        if verify:
            raise DataError(
                f"{train_dir}: found {len(classes)} class folders, {name} has {info.num_classes} "
                f"(pass verify=False to use a subset)"
            )
        from dataclasses import replace

        info = replace(info, num_classes=len(classes), num_train=len(train_y), num_test=len(test_y))
    return RawData(info, train_x, train_y, test_x, test_y, classes)
