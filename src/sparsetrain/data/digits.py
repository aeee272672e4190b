"""scikit-learn's bundled 8x8 digits: a seconds-long smoke-test data set (no files, no network).

1,797 images with values 0..16, scaled to uint8 0..255. The test set is a fixed seeded 20 %
(359 images, seed `SPLIT_SEED`, independent of the validation `split_seed`), so every run
evaluates on the same images.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from sparsetrain.data.info import DIGITS
from sparsetrain.data.types import RawData
from sparsetrain.errors import DataError

SPLIT_SEED = 0
TEST_FRACTION = 0.2


def load_digits_dataset(
    name: str = "digits",
    root: str | os.PathLike | None = None,
    *,
    download: bool = True,
    verify: bool = True,
) -> RawData:
    """Load the digits as uint8 (N, 1, 8, 8) images and int64 labels (root is unused)."""
    del name, root, download, verify
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError(
            "the 'digits' data set needs scikit-learn: pip install scikit-learn "
            "(or pip install -e '.[dev]')"
        ) from e
    bunch = load_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    n = len(y)
    n_test = round(TEST_FRACTION * n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    test_idx, _ = perm[:n_test].sort()
    train_idx, _ = perm[n_test:].sort()
    classes = tuple(str(i) for i in range(10))
    return RawData(DIGITS, x[train_idx], y[train_idx], x[test_idx], y[test_idx], classes)
