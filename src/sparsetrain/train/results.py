"""The files a run leaves behind. Reports and plots read only these.

Layout of a run directory::

    .hydra/            resolved config (written by Hydra)
    metrics.jsonl      one JSON object per line, each with a "type" key:
                         "train"       step, epoch, loss, acc, lr, density
                         "eval"        step, epoch, val_loss, val_acc, test_loss, test_acc
                         "mask_update" step, epoch, density, changed_fraction, itop_rate,
                                       layer_densities {param name: density}
    summary.json       final summary (see SUMMARY_KEYS), accuracies as fractions in [0, 1]
    ckpts/             checkpoints: epoch_<N>.pth (reference name) and last.pt
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from sparsetrain.io import atomic_write_json

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
SUMMARY_KEYS = (
    "method", "init", "density", "dataset", "model", "seed", "epochs", "steps",
    "training_multiplier", "val_accuracy", "test_accuracy", "train_flops", "test_flops",
    "wall_seconds",
)  # fmt: skip


def _jsonable(value: Any) -> Any:
    """Floats that JSON cannot hold (NaN/inf) become None; tensors become numbers."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


class RunWriter:
    """Appends metrics lines and writes the summary of one run directory."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled  # False on non-zero ranks: rank 0 alone writes
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_FILE

    @property
    def summary_path(self) -> Path:
        return self.run_dir / SUMMARY_FILE

    def log(self, record_type: str, **fields: Any) -> None:
        if not self.enabled:
            return
        line = json.dumps(_jsonable({"type": record_type, **fields}), sort_keys=True)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint's step (they will be re-logged)."""
        if not self.enabled or not self.metrics_path.exists():
            return
        kept = [r for r in read_metrics(self.metrics_path) if r.get("step", 0) <= step]
        from sparsetrain.io import atomic_write_bytes

        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
        atomic_write_bytes(self.metrics_path, text.encode())

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.enabled:
            atomic_write_json(self.summary_path, _jsonable(summary))


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Parse metrics.jsonl, skipping a torn last line left by a kill mid-write."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    with open(Path(run_dir) / SUMMARY_FILE, encoding="utf-8") as f:
        return json.load(f)
