"""Group runs over seeds and compute the numbers every table and plot shows.

Groups: runs with the same dataset, model, method, init, density and training multiplier — and
the same learning rate, α (`prune_rate`), ΔT (`interval`) and redistribution mode, so tuning
runs never mix into a main-result mean. Within a group the runs are seeds.

Labels follow the reference table ("RigL", "RigL (ERK)", "RigL_2x (ERK)", "Small Dense"); a
redistribution mode other than the method's default (conf/masking/<method>.yaml) is named
("SNFS · no redist.", "RigL (ERK) · redist. momentum"). When one label was run with several
lr / α / ΔT settings (tuning), the *primary* setting per density is the one with the most seeds
(ties: best mean validation accuracy, then best test accuracy); main tables and figures show
primary groups under the plain label, every other setting is listed with its values
("RigL (ERK) [lr=0.1, α=0.4, ΔT=200]") and kept in results.csv.

Statistics (accuracies in percent): mean over seeds; std is the *sample* standard deviation
(ddof = 1), reported as 0 for a single seed. FLOPs: mean over seeds of the per-run ratios
(training FLOPs per example relative to a dense step, times the training multiplier; test =
inference FLOPs relative to the dense model).
"""

from __future__ import annotations

import csv
import functools
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sparsetrain.report.runs import DENSE_START_METHODS, Run

METHOD_ORDER = (
    "Dense", "Small_Dense", "Static", "SET", "SNFS", "Pruning", "Lottery", "RigL", "RigL_reinit",
)  # fmt: skip
INIT_ORDER = ("-", "Random", "ER", "ERK", "Lottery")

CSV_COLUMNS = (
    "dataset", "model", "method", "init", "density", "training_multiplier", "n_seeds",
    "test_acc_mean", "test_acc_std", "val_acc_mean", "val_acc_std", "train_flops", "test_flops",
    "label", "primary", "lr", "prune_rate", "interval", "redistribution_mode", "seeds",
)  # fmt: skip


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1); std is 0.0 for a single value."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n == 1:
        return mean, 0.0
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var)


def method_label(
    method: str, init: str, training_multiplier: int = 1, redistribution: str | None = None
) -> str:
    """Display name as in the reference table: 'RigL', 'RigL (ERK)', 'RigL_2x (ERK)', 'Small Dense'.

    `redistribution` is named only when it differs from the method's default."""
    name = method.replace("_", " ") if method == "Small_Dense" else method
    if training_multiplier != 1:
        name = f"{name}_{training_multiplier}x"
    if method not in DENSE_START_METHODS and init not in ("-", "", "Random", "Lottery"):
        name = f"{name} ({init})"
    if redistribution is not None and redistribution != default_redistribution(method):
        name += " · no redist." if redistribution == "none" else f" · redist. {redistribution}"
    return name


@functools.cache
def default_redistribution(method: str) -> str:
    """`redistribution_mode` of the method's packaged config (conf/masking/<method>.yaml)."""
    try:
        from importlib import resources

        from omegaconf import OmegaConf

        path = resources.files("sparsetrain") / "conf" / "masking" / f"{method}.yaml"
        if path.is_file():
            value = OmegaConf.create(path.read_text(encoding="utf-8")).get("redistribution_mode")
            return str(value) if value else "none"
    except Exception:  # no packaged config: treat as "none"
        pass
    return "none"


def _order(items: Sequence[str], value: str) -> tuple[int, str]:
    return (items.index(value), "") if value in items else (len(items), value)


@dataclass
class Group:
    dataset: str
    model: str
    method: str
    init: str
    density: float
    training_multiplier: int
    lr: float | None
    prune_rate: float | None
    interval: int | None
    redistribution: str
    runs: list[Run] = field(default_factory=list)
    variant: tuple[tuple[str, str], ...] = ()  # hyper-parameters that tell same-label groups apart
    primary: bool = True  # the setting main tables and figures show for this label and density

    # ---- identity
    @property
    def base_label(self) -> str:
        return method_label(self.method, self.init, self.training_multiplier, self.redistribution)

    @property
    def label(self) -> str:
        """Unique within a dataset/model/density: base label plus differing hyper-parameters."""
        if not self.variant:
            return self.base_label
        return f"{self.base_label} [{self.variant_text}]"

    @property
    def variant_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.variant)

    @property
    def display_label(self) -> str:
        """Label in main tables and figures: the plain label for the primary setting."""
        return self.base_label if self.primary else self.label

    @property
    def sort_key(self) -> tuple:
        return (
            _order(METHOD_ORDER, self.method), self.training_multiplier,
            _order(INIT_ORDER, self.init), self.redistribution,
            self.lr or 0.0, self.prune_rate or 0.0, self.interval or 0,
        )  # fmt: skip

    # ---- statistics
    @property
    def seeds(self) -> list[int | None]:
        return sorted((r.seed for r in self.runs), key=lambda s: (s is None, s or 0))

    @property
    def n_seeds(self) -> int:
        return len(self.runs)

    def test_acc(self) -> tuple[float, float]:
        return mean_std([100.0 * r.test_acc for r in self.runs])

    def val_acc(self) -> tuple[float, float]:
        return mean_std([100.0 * r.val_acc for r in self.runs if r.val_acc is not None])

    def _mean_of(self, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.runs if getattr(r, attr) is not None]
        return math.fsum(values) / len(values) if values else None

    @property
    def train_flops(self) -> float | None:
        return self._mean_of("train_flops")

    @property
    def test_flops(self) -> float | None:
        return self._mean_of("test_flops")

    def row(self) -> dict[str, object]:
        tm, ts = self.test_acc()
        vm, vs = self.val_acc()
        return {
            "dataset": self.dataset,
            "model": self.model,
            "method": self.method,
            "init": self.init,
            "density": self.density,
            "training_multiplier": self.training_multiplier,
            "n_seeds": self.n_seeds,
            "test_acc_mean": tm,
            "test_acc_std": ts,
            "val_acc_mean": None if math.isnan(vm) else vm,
            "val_acc_std": None if math.isnan(vs) else vs,
            "train_flops": self.train_flops,
            "test_flops": self.test_flops,
            "label": self.label,
            "primary": int(self.primary),
            "lr": self.lr,
            "prune_rate": self.prune_rate,
            "interval": self.interval,
            "redistribution_mode": self.redistribution,
            "seeds": ";".join("?" if s is None else str(s) for s in self.seeds),
        }


_HYPER = (("lr", "lr"), ("α", "prune_rate"), ("ΔT", "interval"))


def group_runs(runs: Iterable[Run]) -> list[Group]:
    """Group runs over seeds, sorted by dataset, model, density, then the reference's method order.

    Groups that share a base label within a dataset/model but differ in lr / α / ΔT get a
    `variant` naming the values that differ (the same across densities), and per density one
    of them is marked `primary` (most seeds; ties: best validation, then test accuracy).
    """
    groups: dict[tuple, Group] = {}
    for r in runs:
        key = (
            r.dataset, r.model, r.method, r.init, r.density, r.training_multiplier,
            r.lr, r.prune_rate, r.interval, r.redistribution,
        )  # fmt: skip
        if key not in groups:
            groups[key] = Group(*key)
        groups[key].runs.append(r)

    family: dict[tuple, list[Group]] = defaultdict(list)
    for g in groups.values():
        family[(g.dataset, g.model, g.base_label)].append(g)
    for same in family.values():
        differing = [(n, a) for n, a in _HYPER if len({getattr(g, a) for g in same}) > 1]
        by_density: dict[float, list[Group]] = defaultdict(list)
        for g in same:
            g.variant = tuple((n, _fmt_hyper(getattr(g, a))) for n, a in differing)
            by_density[g.density].append(g)
        for at_d in by_density.values():
            best = max(at_d, key=_primary_rank)
            for g in at_d:
                g.primary = g is best

    return sorted(groups.values(), key=lambda g: (g.dataset, g.model, g.density, g.sort_key))


def _primary_rank(g: Group) -> tuple:
    val, test = g.val_acc()[0], g.test_acc()[0]
    return (g.n_seeds, -math.inf if math.isnan(val) else val, test)


def _fmt_hyper(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def write_csv(groups: Sequence[Group], path: str | os.PathLike) -> Path:
    """results.csv: one row per group; accuracies in percent; empty cell = not available."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for g in groups:
            writer.writerow({k: ("" if v is None else v) for k, v in g.row().items()})
    return path
