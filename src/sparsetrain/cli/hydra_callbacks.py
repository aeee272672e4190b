"""Hydra callbacks registered in `conf/config.yaml` (`hydra.callbacks`)."""

from __future__ import annotations

import os
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

SQLITE_PREFIX = "sqlite:///"


class SweeperStorageDir(Callback):
    """Create the directory of the Optuna sweeper's sqlite storage before the study opens it.

    Why: SQLite (and so Optuna) cannot create a missing parent directory, so a first
    `sparsetrain -m +specific=..._optuna` would fail on `outputs/databases/`. Runs at
    `on_multirun_start`, which Hydra calls before the sweeper starts."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
        if isinstance(storage, str) and storage.startswith(SQLITE_PREFIX):
            parent = os.path.dirname(storage[len(SQLITE_PREFIX) :])
            if parent:
                os.makedirs(parent, exist_ok=True)
