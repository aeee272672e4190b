"""`load_splits`: a data set's train / validation / test tensors on a device."""

from __future__ import annotations

import os

import torch

from sparsetrain.data.registry import DATASETS
from sparsetrain.data.types import Splits
from sparsetrain.errors import ConfigError


def split_indices(
    n: int, validation_split: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Seeded (train, val) index split of range(n); each part sorted; val None when split is 0.

    The validation set has round(validation_split * n) examples (at least one when the split
    is positive), chosen by a `torch.randperm` seeded with `seed`, so it depends on nothing
    but (n, validation_split, seed).
    """
    if not isinstance(validation_split, (int, float)) or not 0.0 <= validation_split < 1.0:
        raise ConfigError(f"validation_split must be in [0, 1), got {validation_split!r}")
    if validation_split == 0:
        return torch.arange(n), None
    n_val = max(1, round(validation_split * n))
    if n_val >= n:
        raise ConfigError(
            f"validation_split={validation_split} leaves no training examples out of {n}"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    val, _ = perm[:n_val].sort()
    train, _ = perm[n_val:].sort()
    return train, val


def load_splits(
    name: str,
    root: str | os.PathLike | None = None,
    validation_split: float = 0.1,
    split_seed: int = 0,
    device: str | torch.device = "cpu",
    *,
    download: bool = True,
    verify: bool = True,
) -> Splits:
    """Load a data set and split its training part into train / validation.

    Images are uint8 (N, C, H, W) and labels int64, both on `device`; `Loader` normalises.
    Files are looked for in `root`, `$SPARSETRAIN_DATA[/<name>]`, system directories and the
    user cache, downloaded when missing (`download=False` or `SPARSETRAIN_OFFLINE=1` to stop
    that), and verified against the published md5s (`verify=False` is for your own or
    generated files). Problems raise `DataError` (files) or `ConfigError` (arguments).
    """
    spec = DATASETS.get(name)
    canonical = DATASETS.canonical(name)
    # validate the split before any expensive work
    if not isinstance(validation_split, (int, float)) or not 0.0 <= validation_split < 1.0:
        raise ConfigError(f"validation_split must be in [0, 1), got {validation_split!r}")
    raw = spec.load(canonical, root, download=download, verify=verify)
    train_idx, val_idx = split_indices(len(raw.train_y), validation_split, split_seed)
    device = torch.device(device)

    def put(x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        if idx is not None and len(idx) != len(x):
            x = x[idx]
        return x.contiguous().to(device)

    train = (put(raw.train_x, train_idx), put(raw.train_y, train_idx))
    val = None if val_idx is None else (put(raw.train_x, val_idx), put(raw.train_y, val_idx))
    test = (put(raw.test_x), put(raw.test_y))
    return Splits(raw.info, train, val, test, raw.classes)
