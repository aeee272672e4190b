"""Optional Weights & Biases logging that never fails a run.

`wandb.use=true`: the API key comes from `$WANDB_API_KEY`, else from the file `wandb.api_key`
(default `wandb_api.key` in the launch directory, as in the reference system). With no key, or
no route to the W&B server, the run logs in **offline** mode (a local `wandb/offline-run-*`
directory inside the run directory, syncable later with `wandb sync`) and says so in one line.
`$WANDB_MODE` (offline / disabled / online) is respected as set. Any W&B failure after that
disables W&B with one line; `metrics.jsonl` is written either way. Only rank 0 logs.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


def _note(message: str) -> None:
    print(f"wandb: {message}", file=sys.stderr, flush=True)


def _read_key(path: str | None) -> str | None:
    key = os.environ.get("WANDB_API_KEY", "").strip()
    if key:
        return key
    if path:
        try:
            return Path(path).expanduser().read_text().strip() or None
        except OSError:
            return None
    return None


def _reachable(url: str, timeout: float = 3.0) -> bool:
    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class WandbLogger:
    """`log(metrics, step)`, `summary(dict)`, `finish()`; all no-ops when disabled."""

    def __init__(self, run: Any = None):
        self.run = run

    @property
    def enabled(self) -> bool:
        return self.run is not None

    @classmethod
    def create(cls, cfg: Any, run_dir: str | os.PathLike, enabled: bool = True) -> WandbLogger:
        wcfg = cfg.get("wandb")
        if not enabled or wcfg is None or not wcfg.get("use", False):
            return cls(None)
        try:
            import wandb
        except ImportError:
            _note(
                "wandb.use=true but the wandb package is not installed (pip install wandb); skipping"
            )
            return cls(None)
        try:
            return cls(cls._init(wandb, cfg, wcfg, Path(run_dir)))
        except Exception as exc:  # never crash a run because of W&B
            _note(
                f"disabled ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            )
            return cls(None)

    @staticmethod
    def _init(wandb: Any, cfg: Any, wcfg: Any, run_dir: Path) -> Any:
        from omegaconf import OmegaConf

        mode = os.environ.get("WANDB_MODE", "").strip().lower() or None
        key = _read_key(wcfg.get("api_key"))
        settings: dict[str, Any] = {"silent": True, "console": "off", "init_timeout": 60}
        if mode in (None, "online", "run"):
            if key is None:
                mode = "offline"
                _note(
                    "no API key ($WANDB_API_KEY or the wandb.api_key file); logging offline "
                    f"to {run_dir / 'wandb'} (upload later with `wandb sync`)"
                )
            elif not _reachable(wandb.Settings().base_url):
                mode = "offline"
                _note(f"W&B server unreachable; logging offline to {run_dir / 'wandb'}")
            else:
                mode = "online"
                settings["api_key"] = key
        run_id = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:12]
        return wandb.init(
            project=wcfg.get("project"),
            entity=wcfg.get("entity"),
            name=str(wcfg.get("name") or cfg.get("exp_name")),
            dir=str(run_dir),
            id=f"{run_id}-s{cfg.get('seed', 0)}",
            resume="allow",
            config=OmegaConf.to_container(cfg, resolve=True),
            mode=mode,
            reinit="finish_previous",
            settings=wandb.Settings(**settings),
        )

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            _note(f"{what} failed ({type(exc).__name__}); W&B disabled for this run")
            self.run = None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self._guard("log", self.run.log, metrics, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self._guard("summary", self.run.summary.update, values)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self._guard("finish", self.run.finish, exit_code=exit_code)
            self.run = None
