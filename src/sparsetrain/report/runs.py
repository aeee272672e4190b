"""Find and read run directories: `summary.json`, `metrics.jsonl`, `.hydra/config.yaml`.

A *run directory* is any directory holding `summary.json`, `metrics.jsonl` or
`.hydra/config.yaml`. Only runs with a readable, complete `summary.json` are used; every other
run directory is reported once through the `warn` callback and skipped, never an exception.

Where a value comes from (summary first: it records what actually ran):

| field               | summary.json            | .hydra/config.yaml (nearest, this dir or a parent)        |
|---------------------|-------------------------|-----------------------------------------------------------|
| dataset, model      | `dataset`, `model`      | `dataset.name`, `model`                                   |
| method, init        | `method`, `init`        | `masking.name`, `masking.sparse_init`                     |
| density (nominal)   | `density` (fallback)    | `masking.density`; Pruning: `masking.final_density` (first)|
| training_multiplier | `training_multiplier`   | `optimizer.training_multiplier` (default 1)               |
| seed                | `seed`                  | `seed`                                                    |
| test/val accuracy   | `test_accuracy`, `val_accuracy` (fractions in [0, 1])                               |
| FLOPs               | `train_flops`, `test_flops` (ratios to dense)                                       |
| lr, α, ΔT, redist.  | `lr`, `prune_rate`, `interval`, `redistribution_mode` | `optimizer.lr`, `masking.prune_rate`, `masking.interval`, `masking.redistribution_mode` |

A summary whose `status` is set and is not `completed` or `evaluated` (e.g. `diverged`) is
skipped with a warning, as is one without a finite `test_accuracy` in [0, 1].

The density is the *nominal* one from the config when there is a config (Small_Dense is a dense
model sized for that density; a measured density of 1.0 would be misleading).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsetrain.train.results import METRICS_FILE, SUMMARY_FILE, read_metrics

CONFIG_FILE = Path(".hydra") / "config.yaml"

# Methods whose mask never changes after init: α and ΔT do not apply, so they do not split groups.
STATIC_METHODS = frozenset({"Dense", "Small_Dense", "Static", "Lottery"})
# Methods that start dense (or are dense): the sparse init does not apply.
DENSE_START_METHODS = frozenset({"Dense", "Small_Dense", "Pruning"})

# The reference's init names and ours, mapped to the short labels used in tables.
INIT_LABELS = {
    "random": "Random",
    "uniform": "Random",
    "erdos-renyi": "ER",
    "er": "ER",
    "erdos-renyi-kernel": "ERK",
    "erk": "ERK",
    "lottery-ticket": "Lottery",
    "lottery": "Lottery",
    "struct-random": "StructRandom",
    "struct-erdos-renyi": "StructER",
    "struct-erdos-renyi-kernel": "StructERK",
}

Warn = Callable[[str], None]


class RunError(Exception):
    """Why a run directory cannot be used (one line)."""


def init_label(init: Any) -> str:
    if init is None or str(init).strip() == "":
        return "-"
    return INIT_LABELS.get(str(init).strip().lower(), str(init))


@dataclass
class Run:
    """One finished run (one seed)."""

    path: Path
    dataset: str
    model: str
    method: str
    init: str  # short label: Random, ER, ERK, Lottery, ...
    density: float
    training_multiplier: int
    seed: int | None
    test_acc: float  # fraction in [0, 1]
    val_acc: float | None
    train_flops: float | None
    test_flops: float | None
    lr: float | None = None
    prune_rate: float | None = None
    interval: int | None = None
    redistribution: str = "none"
    start_when: float | None = None  # masking schedule (config), for the FLOPs closed forms
    end_when: float | None = None
    summary: dict[str, Any] = field(default_factory=dict, repr=False)
    _metrics: list[dict[str, Any]] | None = field(default=None, repr=False)
    metrics_error: str | None = field(default=None, repr=False)

    def metrics(self) -> list[dict[str, Any]]:
        """The lines of metrics.jsonl (empty if absent or unreadable; see `metrics_error`)."""
        if self._metrics is None:
            self._metrics = []
            path = self.path / METRICS_FILE
            if path.exists():
                try:
                    self._metrics = [r for r in read_metrics(path) if isinstance(r, dict)]
                except (OSError, UnicodeDecodeError) as e:
                    self.metrics_error = f"unreadable {METRICS_FILE} ({e.__class__.__name__})"
        return self._metrics

    def records(self, record_type: str) -> list[dict[str, Any]]:
        return [r for r in self.metrics() if r.get("type") == record_type]

    def layer_densities(self) -> dict[str, float] | None:
        """Final per-layer densities: summary `layer_densities`, else the last mask_update line."""
        ld = self.summary.get("layer_densities")
        if not _is_density_map(ld):
            ld = None
            for rec in reversed(self.records("mask_update")):
                if _is_density_map(rec.get("layer_densities")):
                    ld = rec["layer_densities"]
                    break
        if not ld:
            return None
        return {str(k): float(v) for k, v in ld.items()}


def _is_density_map(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(_finite(v) is not None for v in value.values())
    )


def _finite(value: Any) -> float | None:
    """A finite float, or None (missing, null, NaN, not a number)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# ------------------------------------------------------------------------------------ discovery
def _is_run_dir(dirpath: Path, filenames: Iterable[str]) -> bool:
    names = set(filenames)
    return SUMMARY_FILE in names or METRICS_FILE in names or (dirpath / CONFIG_FILE).is_file()


def find_run_dirs(root: str | os.PathLike) -> list[Path]:
    """Every run directory under `root` (itself included), sorted.

    A directory holding only `.hydra/` (no summary, no metrics) that contains other run
    directories is a parent of nested runs, not a run of its own.
    """
    root = Path(root)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # never descend into checkpoints or hidden dirs (.hydra, .submitit, ...)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "ckpts")
        path = Path(dirpath)
        if _is_run_dir(path, filenames):
            found.append(path)
    found_set = set(found)
    result = []
    for path in found:
        only_config = not (path / SUMMARY_FILE).exists() and not (path / METRICS_FILE).exists()
        if only_config and any(p != path and path in p.parents for p in found_set):
            continue
        result.append(path)
    return sorted(result)


def find_optuna_dbs(root: str | os.PathLike) -> list[Path]:
    """SQLite files (`*.db`, `*.sqlite`, `*.sqlite3`) under `root` (Optuna studies)."""
    root = Path(root)
    if root.is_file():
        return [root]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "ckpts")
        for name in sorted(filenames):
            if name.endswith((".db", ".sqlite", ".sqlite3")):
                out.append(Path(dirpath) / name)
    return out


# -------------------------------------------------------------------------------------- loading
def _find_config(run_dir: Path, stop: Path | None) -> Path | None:
    for d in (run_dir, *run_dir.parents):
        cand = d / CONFIG_FILE
        if cand.is_file():
            return cand
        if stop is not None and d == stop:
            break
    return None


def _load_config(path: Path) -> Any:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    if not OmegaConf.is_dict(cfg):
        raise RunError(f"corrupt {path.name}: not a mapping")
    return cfg


def _select(cfg: Any, key: str) -> Any:
    if cfg is None:
        return None
    from omegaconf import OmegaConf

    try:
        value = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
    except Exception:  # an interpolation that cannot be resolved outside Hydra
        return None
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=False)
    return value


def load_run(
    run_dir: str | os.PathLike, root: str | os.PathLike | None = None
) -> tuple[Run, str | None]:
    """Read one run directory. Returns (run, note); `note` is a non-fatal problem (e.g. an
    unreadable config). Raises `RunError` (one-line reason) when the run cannot be used."""
    run_dir = Path(run_dir)
    summary_path = run_dir / SUMMARY_FILE
    if not summary_path.exists():
        what = "metrics.jsonl but " if (run_dir / METRICS_FILE).exists() else ""
        raise RunError(f"incomplete run ({what}no {SUMMARY_FILE}; still running or killed?)")
    try:
        with open(summary_path, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"corrupt {SUMMARY_FILE} ({e.__class__.__name__}: {e})") from None
    if not isinstance(summary, dict):
        raise RunError(f"corrupt {SUMMARY_FILE}: expected a JSON object")

    note = None
    cfg = None
    cfg_path = _find_config(run_dir, Path(root) if root is not None else None)
    if cfg_path is not None:
        try:
            cfg = _load_config(cfg_path)
        except Exception as e:
            note = f"ignoring unreadable {cfg_path} ({e.__class__.__name__})"

    def pick(summary_key: str, cfg_key: str | None) -> Any:
        value = summary.get(summary_key)
        if value is None and cfg_key is not None:
            value = _select(cfg, cfg_key)
        return value

    method = pick("method", "masking.name")
    dataset = pick("dataset", "dataset.name")
    model = pick("model", "model")
    for name, value in (("method", method), ("dataset", dataset), ("model", model)):
        if value is None or str(value) == "":
            raise RunError(f"no {name} in {SUMMARY_FILE} or .hydra/config.yaml")
    method, dataset, model = str(method), str(dataset), str(model)

    density = None
    if method == "Pruning":
        density = _finite(_select(cfg, "masking.final_density"))
    if density is None:
        density = _finite(_select(cfg, "masking.density"))
    if density is None:
        density = _finite(summary.get("density"))
    if density is None or not 0.0 < density <= 1.0:
        raise RunError(f"no valid density (got {density!r})")

    status = summary.get("status")
    if status not in (None, "completed", "evaluated"):
        raise RunError(f"run did not complete (status: {status})")
    test_acc = _finite(summary.get("test_accuracy"))
    if test_acc is None:
        raise RunError(f"{SUMMARY_FILE} has no finite test_accuracy")
    if not 0.0 <= test_acc <= 1.0:
        raise RunError(f"test_accuracy {test_acc} outside [0, 1] (accuracies are fractions)")
    val_acc = _finite(summary.get("val_accuracy"))
    if val_acc is not None and not 0.0 <= val_acc <= 1.0:
        raise RunError(f"val_accuracy {val_acc} outside [0, 1] (accuracies are fractions)")

    tm = _finite(pick("training_multiplier", "optimizer.training_multiplier"))
    seed = _finite(pick("seed", "seed"))
    lr = _finite(pick("lr", "optimizer.lr"))
    prune_rate = _finite(pick("prune_rate", "masking.prune_rate"))
    interval = _finite(pick("interval", "masking.interval"))
    redist = pick("redistribution_mode", "masking.redistribution_mode")
    if method in STATIC_METHODS:
        prune_rate = interval = None
    init = "-" if method in DENSE_START_METHODS else init_label(pick("init", "masking.sparse_init"))

    run = Run(
        path=run_dir,
        dataset=dataset,
        model=model,
        method=method,
        init=init,
        density=round(density, 6),
        training_multiplier=int(tm) if tm is not None else 1,
        seed=int(seed) if seed is not None else None,
        test_acc=test_acc,
        val_acc=val_acc,
        train_flops=_finite(summary.get("train_flops")),
        test_flops=_finite(summary.get("test_flops")),
        lr=lr,
        prune_rate=prune_rate,
        interval=int(interval) if interval is not None else None,
        redistribution=str(redist) if redist not in (None, "") else "none",
        start_when=_finite(_select(cfg, "masking.start_when")),
        end_when=_finite(_select(cfg, "masking.end_when")),
        summary=summary,
    )
    return run, note


def dataset_key(name: str) -> str:
    """Loose dataset name for filters: 'fashion-mnist' == 'FashionMNIST'."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def collect_runs(
    roots: Iterable[str | os.PathLike],
    warn: Warn,
    datasets: Iterable[str] | None = None,
) -> tuple[list[Run], int, int]:
    """Load every usable run under `roots`. Returns (runs, n_run_dirs_found, n_skipped).

    Each unusable directory produces exactly one `warn` line. Two runs of the same
    configuration and seed (a re-run in another directory) keep the newer summary.
    """
    wanted = {dataset_key(d) for d in datasets} if datasets else None
    runs: list[Run] = []
    n_found = n_skipped = 0
    seen: set[Path] = set()
    for root in roots:
        for run_dir in find_run_dirs(root):
            if run_dir.resolve() in seen:
                continue
            seen.add(run_dir.resolve())
            n_found += 1
            try:
                run, note = load_run(run_dir, root)
            except RunError as e:
                n_skipped += 1
                warn(f"skipping {run_dir}: {e}")
                continue
            except Exception as e:  # never crash on one bad directory
                n_skipped += 1
                warn(f"skipping {run_dir}: unexpected {e.__class__.__name__}: {e}")
                continue
            if wanted is not None and dataset_key(run.dataset) not in wanted:
                n_found -= 1
                continue
            if note:
                warn(f"{run_dir}: {note}")
            runs.append(run)
    return _dedupe(runs, warn), n_found, n_skipped


def _dedupe(runs: list[Run], warn: Warn) -> list[Run]:
    by_key: dict[tuple, Run] = {}
    for run in runs:
        if run.seed is None:
            by_key[("path", str(run.path))] = run
            continue
        key = (
            run.dataset, run.model, run.method, run.init, run.density, run.training_multiplier,
            run.lr, run.prune_rate, run.interval, run.redistribution, run.seed,
        )  # fmt: skip
        other = by_key.get(key)
        if other is None:
            by_key[key] = run
            continue
        newer, older = sorted((run, other), key=_mtime, reverse=True)
        by_key[key] = newer
        warn(
            f"skipping {older.path}: same configuration and seed {run.seed} as {newer.path} (newer)"
        )
    return list(by_key.values())


def _mtime(run: Run) -> float:
    try:
        return (run.path / SUMMARY_FILE).stat().st_mtime
    except OSError:
        return 0.0
