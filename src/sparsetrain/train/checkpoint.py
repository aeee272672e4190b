"""Checkpoints: atomic writes, safe loads, config hashing, RNG capture, keep-last-K.

A checkpoint is a plain dict loadable with `torch.load(path, weights_only=True)` (tensors,
numbers, strings, lists and dicts only — no pickled code runs on load)::

    format        CKPT_FORMAT
    version       sparsetrain.__version__
    config_hash   sha256 (16 hex) of the result-relevant config (see HASH_EXCLUDE)
    config        {dotted key: value} that the hash covers, to name what differs on a mismatch
    model         model state_dict (unwrapped from DDP)
    init_model    step-0 weights (Lottery rewinds to them)
    optimizer     optimizer state_dict
    scheduler     LR schedule parameters (the LR is a pure function of the step)
    sparsity      SparsityController.state_dict() (masks, step, schedule position, RNG)
    flops         FlopsAccountant.state_dict()
    rng           torch / cuda / numpy / python RNG states
    position      {"epoch", "batch", "step"}: epochs completed, micro-batches of the current
                  epoch consumed, optimizer steps taken
    finished      True once training is complete
    wall_seconds  training wall time so far (summed over resumes)
    last_eval     the latest evaluation record, or None

Files: `<ckpt_dir>/last.pt` (always the latest) and `<ckpt_dir>/epoch_<N>.pth` (reference
name, every `ckpt_interval` epochs and at the end; the newest `keep_last_ckpts` are kept).

Distributed: rank 0 alone writes (`CheckpointManager(enabled=...)`; the others wait at a
barrier until the file is in place). On resume every rank loads the file rank 0 chose, with
`map_location="cpu"` — never onto the GPU it was saved from — and `load_state_dict` copies it
into the rank's own device; the controller's generator state must stay a CPU tensor anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsetrain.errors import CheckpointError
from sparsetrain.io import atomic_torch_save

CKPT_FORMAT = 1
LAST = "last.pt"
_EPOCH_RE = re.compile(r"^epoch_(\d+)\.pth$")

#: config keys that do not change a run's result: excluded from the hash, so a run can be
#: resumed on another device, with other logging/checkpoint settings, or from a moved directory
HASH_EXCLUDE = (
    "resume",
    "device",
    "progress",
    "log_interval",
    "val_interval",
    "ckpt_dir",
    "ckpt_interval",
    "ckpt_every_steps",
    "keep_last_ckpts",
    "on_nonfinite_loss",
    "multi_seed",
    "exp_name",
    "wandb",
    "hydra",
    "dataset.root",
    "dataset.max_threads",
    "dataset.test_batch_size",
    "masking.print_FLOPs",
    "masking.init_exp_name",
    "masking.override_dir",
    "masking.lottery_mask_path",
)


# --------------------------------------------------------------------------- config hash
def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key in sorted(value, key=str):
            _flatten(value[key], f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = list(value) if isinstance(value, list | tuple) else value


def _excluded(key: str) -> bool:
    return any(key == ex or key.startswith(ex + ".") for ex in HASH_EXCLUDE)


def config_items(cfg: Any) -> dict[str, Any]:
    """The result-relevant config as {dotted key: plain value} (interpolations resolved)."""
    from omegaconf import DictConfig, OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, Any] = {}
    _flatten(container, "", flat)
    return {k: v for k, v in flat.items() if not _excluded(k)}


def config_hash(items: Mapping[str, Any]) -> str:
    text = json.dumps(dict(items), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any], limit: int = 6
) -> str:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if old != new:
            diffs.append(f"{key}: {old} -> {new}")
    more = f" (+{len(diffs) - limit} more)" if len(diffs) > limit else ""
    return ", ".join(diffs[:limit]) + more if diffs else "(unknown keys)"


# --------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """Every global RNG the loop touches, as tensors/ints (weights_only-safe)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- files
def load(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint safely (weights_only); corrupt or foreign files → CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({reason[:160]}); "
            "delete it (or rerun with resume=false) to start over"
        ) from None
    if not isinstance(ckpt, dict) or not ("model" in ckpt or "state_dict" in ckpt):
        raise CheckpointError(f"{path} is not a sparsetrain checkpoint (no 'model' entry)")
    return ckpt


def check_config(
    ckpt: Mapping[str, Any], path: str | os.PathLike, items: Mapping[str, Any]
) -> None:
    """Raise CheckpointError naming the differing keys when the config hash does not match."""
    if ckpt.get("config_hash") == config_hash(items):
        return
    saved = ckpt.get("config") or {}
    raise CheckpointError(
        f"checkpoint {path} was written by a run with a different config "
        f"({describe_differences(saved, items)}); use the original settings to resume, "
        "or resume=false to start this run over"
    )


def check_model(ckpt_model: Mapping[str, torch.Tensor], model: torch.nn.Module, path: Any) -> None:
    """Raise CheckpointError naming missing/unexpected/reshaped parameters."""
    own = model.state_dict()
    missing = [k for k in own if k not in ckpt_model]
    unexpected = [k for k in ckpt_model if k not in own]
    reshaped = [
        f"{k} {tuple(ckpt_model[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in ckpt_model and tuple(ckpt_model[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or reshaped:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}")
        if reshaped:
            parts.append(f"shape of {', '.join(reshaped[:3])}")
        raise CheckpointError(
            f"checkpoint {path} holds a different model ({'; '.join(parts)}); "
            "check model=/dataset=/masking= or start a new run directory"
        )


def epoch_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(epoch, path) of every `epoch_<N>.pth`, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _EPOCH_RE.match(p.name))]
    return sorted(found)


def latest(ckpt_dir: str | os.PathLike) -> Path | None:
    """`last.pt` if present, else the newest `epoch_<N>.pth` (a reference-style directory)."""
    last = Path(ckpt_dir) / LAST
    if last.is_file():
        return last
    epochs = epoch_checkpoints(ckpt_dir)
    return epochs[-1][1] if epochs else None


class CheckpointManager:
    """Writes `last.pt` and `epoch_<N>.pth` atomically and keeps the newest `keep_last`."""

    def __init__(self, ckpt_dir: str | os.PathLike, keep_last: int = 2, enabled: bool = True):
        self.dir = Path(ckpt_dir)
        self.keep_last = max(1, int(keep_last))
        self.enabled = enabled  # rank 0 alone writes

    @property
    def last_path(self) -> Path:
        return self.dir / LAST

    def save(self, state: Mapping[str, Any], epoch: int | None = None) -> Path | None:
        """Write `last.pt` (and `epoch_<epoch>.pth` when `epoch` is given); prune old epochs."""
        if not self.enabled:
            return None
        if epoch is not None:
            atomic_torch_save(self.dir / f"epoch_{epoch}.pth", dict(state))
        atomic_torch_save(self.last_path, dict(state))
        if epoch is not None:
            for _, old in epoch_checkpoints(self.dir)[: -self.keep_last]:
                old.unlink(missing_ok=True)
        return self.last_path
