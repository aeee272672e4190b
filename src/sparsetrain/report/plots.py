"""PNG figures (matplotlib, no GUI backend: figures are drawn with `matplotlib.figure.Figure`).

Every function takes grouped results, writes zero or more PNGs into `out_dir` and returns their
paths. A figure whose data is absent is not drawn; the caller prints one info line per kind.

| function                  | file(s)                                               | needs                               |
|---------------------------|-------------------------------------------------------|-------------------------------------|
| accuracy_vs_density       | accuracy_vs_density_<ds>_<model>.png                  | a method at >= 2 densities          |
| accuracy_vs_train_flops   | accuracy_vs_train_flops_<ds>_<model>.png              | summary `train_flops`               |
| layer_densities           | layer_densities_<ds>_<model>_d<density>.png           | summary `layer_densities` or mask_update lines |
| training_curves           | curves_<ds>_<model>_d<density>.png                    | `train` (loss) and `eval` lines     |
| mask_churn                | mask_churn_<ds>_<model>_d<density>.png                | `mask_update` lines                 |
| alpha_deltaT_grid         | tuning_alpha_deltaT_<ds>_<model>_<method>_d<density>.png | runs at >= 2 (α, ΔT) settings    |
| alpha_deltaT_optuna       | tuning_alpha_deltaT_optuna_<study>.png                | an Optuna study over α and ΔT       |
| lr_grid                   | tuning_lr_<ds>_<model>.png                            | runs at >= 2 learning rates         |
| erk_vs_random_flops       | erk_vs_random_flops_<ds>_<model>.png                  | one method with ERK and Random runs |
| redist_inference_flops    | redist_inference_flops_<ds>_<model>_d<density>.png    | a run with redistribution and per-update FLOPs |
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, NullFormatter

from sparsetrain.report.aggregate import Group
from sparsetrain.report.runs import STATIC_METHODS, Run

DENSE_MODELS = frozenset({"Dense", "Small_Dense"})  # no masks: every layer at density 1

STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 12,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "legend.framealpha": 0.85,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 2.0,
    "lines.markersize": 6,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
DPI = 130


# -------------------------------------------------------------------------------------- helpers
def slug(*parts: object) -> str:
    text = "_".join(str(p) for p in parts if p not in (None, ""))
    return re.sub(r"[^A-Za-z0-9.=+-]+", "_", text).strip("_")


@contextmanager
def _figure(path: Path, written: list[Path], **kwargs: Any):
    with matplotlib.rc_context(STYLE):
        fig = Figure(**kwargs)
        yield fig
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    written.append(path)


class Palette:
    """One colour per label, stable across all figures of a report."""

    def __init__(self, labels: Iterable[str]):
        cycle = [matplotlib.colormaps["tab10"](i) for i in range(10)]
        cycle += [matplotlib.colormaps["tab20"](i) for i in range(1, 20, 2)]
        self._colors: dict[str, Any] = {}
        self._cycle = cycle
        for label in labels:
            self(label)

    def __call__(self, label: str) -> Any:
        if label not in self._colors:
            self._colors[label] = self._cycle[len(self._colors) % len(self._cycle)]
        return self._colors[label]


def _legend(ax: Any, n: int, **kwargs: Any) -> None:
    if n == 0:
        return
    if n > 6:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)
    else:
        ax.legend(loc="best", **kwargs)


def _fig_legend(fig: Figure, axes: Sequence[Any]) -> None:
    """One legend for side-by-side panels, below them, without duplicates."""
    handles, labels, seen = [], [], set()
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in seen:
                seen.add(lab)
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(
            handles, labels, loc="lower center", ncol=min(len(labels), 4),
            bbox_to_anchor=(0.5, -0.02), frameon=False,
        )  # fmt: skip
        fig.subplots_adjust(bottom=0.16 + 0.06 * ((len(labels) - 1) // 4))


def _density_axis(ax: Any, densities: Sequence[float]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(sorted(set(densities)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("Density (1 − sparsity)")


def _by(groups: Iterable[Group], key: Callable[[Group], Any]) -> dict[Any, list[Group]]:
    out: dict[Any, list[Group]] = defaultdict(list)
    for g in groups:
        out[key(g)].append(g)
    return dict(sorted(out.items(), key=lambda kv: tuple(str(x) for x in kv[0])))


def _ds_model(g: Group) -> tuple[str, str]:
    return (g.dataset, g.model)


def _ds_model_density(g: Group) -> tuple[str, str, float]:
    return (g.dataset, g.model, g.density)


def _per_density(groups: Iterable[Group]) -> list[tuple[tuple[str, str, float], list[Group]]]:
    """(dataset, model, density) -> groups at that density plus the Dense baselines of the same
    dataset/model (a Dense-only figure only when nothing else was run)."""
    out = []
    for (ds, model), gs in _by(groups, _ds_model).items():
        dense = [g for g in gs if g.method == "Dense"]
        rest = [g for g in gs if g.method != "Dense"]
        if not rest:
            if dense:
                out.append(((ds, model, dense[0].density), dense))
            continue
        for d in sorted({g.density for g in rest}):
            at_d = sorted(dense + [g for g in rest if g.density == d], key=lambda g: g.sort_key)
            out.append(((ds, model, d), at_d))
    return out


def _mean_series(series: Sequence[tuple[Sequence[float], Sequence[float]]]) -> tuple:
    """Mean and std over seeds, step by step (each step averages the seeds that logged it)."""
    by_step: dict[float, list[float]] = defaultdict(list)
    for steps, values in series:
        for s, v in zip(steps, values):
            if v is not None and math.isfinite(v):
                by_step[s].append(v)
    steps = np.array(sorted(by_step))
    mean = np.array([np.mean(by_step[s]) for s in steps])
    std = np.array([np.std(by_step[s], ddof=1) if len(by_step[s]) > 1 else 0.0 for s in steps])
    return steps, mean, std


def _series(runs: Iterable[Run], record_type: str, key: str, scale: float = 1.0) -> list[tuple]:
    out = []
    for run in runs:
        recs = [r for r in run.records(record_type) if _num(r.get(key)) is not None]
        recs = [r for r in recs if _num(r.get("step")) is not None]
        if recs:
            recs.sort(key=lambda r: float(r["step"]))
            out.append(([float(r["step"]) for r in recs], [scale * float(r[key]) for r in recs]))
    return out


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _title(*parts: object) -> str:
    return " · ".join(str(p) for p in parts if p not in (None, ""))


def _dlabel(d: float) -> str:
    return f"density {d:g}"


# ------------------------------------------------------------------------------------ accuracy
def accuracy_vs_density(groups: Sequence[Group], out_dir: Path, palette: Palette) -> list[Path]:
    written: list[Path] = []
    for (ds, model), gs in _by(groups, _ds_model).items():
        sparse = [g for g in gs if g.method != "Dense"]
        by_label = _by(sparse, lambda g: (g.display_label,))
        if not any(len({g.density for g in v}) >= 2 for v in by_label.values()):
            continue
        path = out_dir / f"accuracy_vs_density_{slug(ds, model)}.png"
        with _figure(path, written, figsize=(7.0, 4.8)) as fig:
            ax = fig.subplots()
            labels = sorted(by_label, key=lambda k: min(g.sort_key for g in by_label[k]))
            n = len(labels)
            for i, (label,) in enumerate(labels):
                rows = sorted(by_label[(label,)], key=lambda g: g.density)
                jitter = 1.0 + 0.012 * (i - (n - 1) / 2)  # keep error bars apart
                xs = [g.density * jitter for g in rows]
                ms = [g.test_acc() for g in rows]
                ax.errorbar(
                    xs, [m for m, _ in ms], yerr=[s for _, s in ms], label=label,
                    color=palette(label), marker="o", capsize=3,
                )  # fmt: skip
            for g in gs:
                if g.method == "Dense":
                    m, s = g.test_acc()
                    ax.axhline(
                        m, color="0.25", ls="--", lw=1.5, label=f"{g.display_label} (density 1)"
                    )
                    if s > 0:
                        ax.axhspan(m - s, m + s, color="0.5", alpha=0.15, lw=0)
            _density_axis(ax, [g.density for g in sparse])
            ax.set_ylabel("Test accuracy (%)")
            ax.set_title(_title(ds, model, "test accuracy vs density (mean ± std over seeds)"))
            _legend(ax, len(ax.get_legend_handles_labels()[1]))
    return written


def accuracy_vs_train_flops(groups: Sequence[Group], out_dir: Path, palette: Palette) -> list[Path]:
    written: list[Path] = []
    for (ds, model), gs in _by(groups, _ds_model).items():
        gs = [g for g in gs if g.train_flops is not None]
        if not gs:
            continue
        path = out_dir / f"accuracy_vs_train_flops_{slug(ds, model)}.png"
        with _figure(path, written, figsize=(7.0, 4.8)) as fig:
            ax = fig.subplots()
            by_label = _by(gs, lambda g: (g.display_label,))
            for (label,), rows in sorted(
                by_label.items(), key=lambda kv: min(g.sort_key for g in kv[1])
            ):
                rows = sorted(rows, key=lambda g: g.train_flops)
                ms = [g.test_acc() for g in rows]
                ax.errorbar(
                    [g.train_flops for g in rows], [m for m, _ in ms], yerr=[s for _, s in ms],
                    label=label, color=palette(label), marker="o", capsize=3,
                )  # fmt: skip
                for g, (m, _) in zip(rows, ms):
                    ax.annotate(
                        f"{g.density:g}", (g.train_flops, m), textcoords="offset points",
                        xytext=(4, 4), fontsize=8, color=palette(label),
                    )  # fmt: skip
            ax.set_xlabel("Training FLOPs (× dense)")
            ax.set_ylabel("Test accuracy (%)")
            ax.set_title(_title(ds, model, "accuracy vs training FLOPs (labels: density)"))
            _legend(ax, len(by_label))
    return written


# -------------------------------------------------------------------------------------- layers
def _short_layer(name: str) -> str:
    name = re.sub(r"\.weight$", "", name)
    name = name.replace("block", "b").replace("layer.", "l").replace("residual_function.", "rf")
    return name


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _layer_order(names: list[str], g: Group) -> list[str]:
    """Layers in forward order when the model can be traced (files store keys sorted), else in
    natural order (layer2 before layer10)."""
    run = g.runs[0]
    traced = _traced_layer_flops(run.model, run.dataset, _num(run.summary.get("width")) or 1.0)
    if traced and set(names) <= set(traced):
        return [k for k in traced if k in set(names)]
    return sorted(names, key=_natural_key)


def layer_densities(groups: Sequence[Group], out_dir: Path, palette: Palette) -> list[Path]:
    written: list[Path] = []
    sparse = (g for g in groups if g.method not in DENSE_MODELS)
    for (ds, model, d), gs in _by(sparse, _ds_model_density).items():
        bars: list[tuple[str, dict[str, float]]] = []
        for g in sorted(gs, key=lambda g: g.sort_key):
            maps = [m for m in (r.layer_densities() for r in g.runs) if m]
            if not maps:
                continue
            names = list(dict.fromkeys(k for m in maps for k in m))
            bars.append(
                (
                    g.display_label,
                    {k: float(np.mean([m[k] for m in maps if k in m])) for k in names},
                )
            )
        if not bars:
            continue
        layers = _layer_order(list(dict.fromkeys(k for _, m in bars for k in m)), gs[0])
        n_l, n_b = len(layers), len(bars)
        width = min(max(7.0, 0.28 * n_l * max(n_b, 2) + 2.0), 22.0)
        path = out_dir / f"layer_densities_{slug(ds, model, f'd{d:g}')}.png"
        with _figure(path, written, figsize=(width, 4.8)) as fig:
            ax = fig.subplots()
            x = np.arange(n_l)
            w = 0.8 / n_b
            for i, (label, m) in enumerate(bars):
                ax.bar(
                    x + (i - (n_b - 1) / 2) * w, [m.get(k, np.nan) for k in layers], width=w,
                    label=label, color=palette(label),
                )  # fmt: skip
            ax.axhline(d, color="0.3", ls=":", lw=1.5, label=f"global density {d:g}")
            ax.set_xticks(x)
            ax.set_xticklabels([_short_layer(k) for k in layers], rotation=45, ha="right")
            ax.set_xlim(-0.6, n_l - 0.4)
            ax.set_ylim(0, 1.05)
            ax.set_xlabel("Layer (masked weight)")
            ax.set_ylabel("Layer density")
            ax.set_title(_title(ds, model, _dlabel(d), "final layer-wise density"))
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return written


# ------------------------------------------------------------------------------------- curves
def _plot_mean(ax: Any, steps: Any, mean: Any, std: Any, label: str, color: Any) -> None:
    ax.plot(steps, mean, label=label, color=color)
    if np.any(std > 0):
        ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.18, lw=0)


def training_curves(groups: Sequence[Group], out_dir: Path, palette: Palette) -> list[Path]:
    written: list[Path] = []
    for (ds, model, d), gs in _per_density(groups):
        gs = sorted(gs, key=lambda g: g.sort_key)
        loss = {g.display_label: _series(g.runs, "train", "loss") for g in gs}
        has_val = any(_series(g.runs, "eval", "val_acc") for g in gs)
        acc_key = "val_acc" if has_val else "test_acc"
        acc = {g.display_label: _series(g.runs, "eval", acc_key, 100.0) for g in gs}
        if not any(loss.values()) and not any(acc.values()):
            continue
        path = out_dir / f"curves_{slug(ds, model, f'd{d:g}')}.png"
        with _figure(path, written, figsize=(11.0, 4.4)) as fig:
            ax_l, ax_a = fig.subplots(1, 2)
            for g in gs:
                lab = g.display_label
                if loss[lab]:
                    _plot_mean(ax_l, *_mean_series(loss[lab]), lab, palette(lab))
                if acc[lab]:
                    _plot_mean(ax_a, *_mean_series(acc[lab]), lab, palette(lab))
            ax_l.set_xlabel("Training step")
            ax_l.set_ylabel("Training loss")
            ax_l.set_title("Training loss")
            ax_a.set_xlabel("Training step")
            which = "Validation" if has_val else "Test"
            ax_a.set_ylabel(f"{which} accuracy (%)")
            ax_a.set_title(f"{which} accuracy")
            fig.suptitle(_title(ds, model, _dlabel(d), "mean over seeds, band = ± std"))
            _fig_legend(fig, [ax_l, ax_a])
    return written


def mask_churn(groups: Sequence[Group], out_dir: Path, palette: Palette) -> list[Path]:
    written: list[Path] = []
    for (ds, model, d), gs in _by(groups, _ds_model_density).items():
        gs = sorted(gs, key=lambda g: g.sort_key)
        churn = {g.display_label: _series(g.runs, "mask_update", "changed_fraction") for g in gs}
        itop = {g.display_label: _series(g.runs, "mask_update", "itop_rate") for g in gs}
        if not any(churn.values()) and not any(itop.values()):
            continue
        path = out_dir / f"mask_churn_{slug(ds, model, f'd{d:g}')}.png"
        with _figure(path, written, figsize=(11.0, 4.4)) as fig:
            ax_c, ax_i = fig.subplots(1, 2)
            for g in gs:
                lab = g.display_label
                if churn[lab]:
                    steps, m, _ = _mean_series(churn[lab])
                    ax_c.plot(steps, m, label=lab, color=palette(lab), marker=".", ms=4)
                if itop[lab]:
                    _plot_mean(ax_i, *_mean_series(itop[lab]), lab, palette(lab))
            ax_c.set_xlabel("Training step")
            ax_c.set_ylabel("Fraction of active weights changed")
            ax_c.set_title("Mask churn per update")
            ax_c.set_ylim(bottom=0)
            ax_i.set_xlabel("Training step")
            ax_i.set_ylabel("ITOP rate (weights ever active)")
            ax_i.set_title("In-time over-parameterization")
            ax_i.set_ylim(bottom=0)
            fig.suptitle(_title(ds, model, _dlabel(d), "mean over seeds"))
            _fig_legend(fig, [ax_c, ax_i])
    return written


# -------------------------------------------------------------------------------------- tuning
def _tuning_key(g: Group) -> tuple:
    return (
        g.dataset,
        g.model,
        g.method,
        g.init,
        g.density,
        g.training_multiplier,
        g.redistribution,
    )


def _objective(g: Group) -> tuple[float, float, str]:
    m, s = g.val_acc()
    if not math.isnan(m):
        return m, s, "Validation accuracy (%)"
    m, s = g.test_acc()
    return m, s, "Test accuracy (%)"


def _heat_panel(ax: Any, alphas, deltas, values, texts, vmin, vmax) -> Any:
    ax.set_facecolor("0.93")  # cells not run
    im = ax.imshow(values, origin="lower", aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(deltas)))
    ax.set_xticklabels([f"{t:g}" for t in deltas])
    ax.set_yticks(range(len(alphas)))
    ax.set_yticklabels([f"{a:g}" for a in alphas])
    ax.set_xlabel("ΔT (update interval, steps)")
    ax.set_ylabel("α (initial update fraction)")
    ax.grid(False)
    mid = (vmin + vmax) / 2
    for (i, j), text in texts.items():
        ax.text(j, i, text, ha="center", va="center", fontsize=9,
                color="black" if values[i, j] > mid else "white")  # fmt: skip
    if np.isfinite(values).any():
        i, j = np.unravel_index(np.nanargmax(values), values.shape)
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2.5))
    return im


def alpha_deltaT_grid(groups: Sequence[Group], out_dir: Path) -> list[Path]:
    written: list[Path] = []
    for key, gs in _by((g for g in groups if g.prune_rate is not None and g.interval is not None),
                       _tuning_key).items():  # fmt: skip
        if len({(g.prune_rate, g.interval) for g in gs}) < 2:
            continue
        ds, model, _, _, d, _, redist = key
        lrs = sorted({g.lr for g in gs}, key=lambda v: (v is None, v or 0.0))
        alphas = sorted({g.prune_rate for g in gs})
        deltas = sorted({g.interval for g in gs})
        objs = {id(g): _objective(g) for g in gs}
        finite = [objs[id(g)][0] for g in gs]
        vmin, vmax = min(finite), max(finite)
        if vmax - vmin < 1e-9:
            vmin, vmax = vmin - 0.5, vmax + 0.5
        clabel = next(iter(objs.values()))[2]
        label = gs[0].base_label + (f", redist. {redist}" if redist != "none" else "")
        ncol = min(len(lrs), 3)
        nrow = math.ceil(len(lrs) / ncol)
        path = out_dir / f"tuning_alpha_deltaT_{slug(ds, model, label, f'd{d:g}')}.png"
        size = (
            max(4.4, 1.1 * len(deltas) + 2.2) * ncol + 1.2,
            max(3.8, 0.8 * len(alphas) + 2.2) * nrow,
        )
        with _figure(path, written, figsize=size, layout="constrained") as fig:
            axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
            for ax, lr in zip(axes, lrs):
                values = np.full((len(alphas), len(deltas)), np.nan)
                texts = {}
                for g in gs:
                    if g.lr != lr:
                        continue
                    i, j = alphas.index(g.prune_rate), deltas.index(g.interval)
                    m, s, _ = objs[id(g)]
                    values[i, j] = m
                    texts[(i, j)] = f"{m:.2f}\n± {s:.2f}" if g.n_seeds > 1 else f"{m:.2f}"
                im = _heat_panel(ax, alphas, deltas, values, texts, vmin, vmax)
                ax.set_title(f"lr = {lr:g}" if lr is not None else "")
            for ax in axes[len(lrs) :]:
                ax.set_visible(False)
            fig.colorbar(im, ax=list(axes[: len(lrs)]), label=clabel, shrink=0.9)
            best = "red: best per learning rate" if len(lrs) > 1 else "red: best"
            fig.suptitle(_title(ds, model, label, _dlabel(d), f"α / ΔT grid ({best})"))
    return written


@dataclass
class Study:
    name: str
    source: str
    trials: list[tuple[float, float, float]]  # (alpha, deltaT, objective)


_ALPHA_KEYS = ("masking.prune_rate", "prune_rate", "alpha")
_DELTA_KEYS = ("masking.interval", "interval", "deltaT", "delta_t")


def load_optuna_studies(source: str | Path, warn: Callable[[str], None]) -> list[Study]:
    """Completed trials over α and ΔT of every study in an Optuna storage.

    SQLite files (a path or `sqlite:///` URL) are read directly (read-only, no optuna import
    needed); other storage URLs go through `optuna` if it is installed."""
    url = str(source)
    path = None
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
    elif "://" not in url:
        path = Path(url)
    try:
        if path is not None:
            if not path.is_file():
                warn(f"skipping Optuna storage {url}: no such file")
                return []
            return _read_optuna_sqlite(path, str(source))
        return _read_optuna_url(url)
    except Exception as e:  # not an Optuna database, locked, unknown schema, optuna missing
        first = (str(e).splitlines() or [""])[0][:160]
        warn(f"skipping Optuna storage {source}: {e.__class__.__name__}: {first}")
        return []


def _param(params: dict[str, float], keys: Sequence[str]) -> float | None:
    return next((params[k] for k in keys if k in params and _num(params[k]) is not None), None)


def _read_optuna_sqlite(path: Path, source: str) -> list[Study]:
    import json
    import sqlite3

    con = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"studies", "trials", "trial_params"} <= tables:
            raise ValueError("not an Optuna database (no studies/trials/trial_params tables)")
        studies = []
        for study_id, name in con.execute("SELECT study_id, study_name FROM studies").fetchall():
            if "trial_values" in tables:  # optuna >= 2.4
                rows = con.execute(
                    "SELECT t.trial_id, v.value FROM trials t JOIN trial_values v "
                    "ON v.trial_id = t.trial_id AND v.objective = 0 "
                    "WHERE t.study_id = ? AND t.state = 'COMPLETE'", (study_id,),
                ).fetchall()  # fmt: skip
            else:
                rows = con.execute(
                    "SELECT trial_id, value FROM trials WHERE study_id = ? AND state = 'COMPLETE'",
                    (study_id,),
                ).fetchall()
            trials = []
            for trial_id, value in rows:
                params = {}
                for pname, pvalue, dist in con.execute(
                    "SELECT param_name, param_value, distribution_json FROM trial_params "
                    "WHERE trial_id = ?", (trial_id,),
                ):  # fmt: skip
                    d = json.loads(dist or "{}")
                    if "Categorical" in str(d.get("name", "")):  # stored as the choice's index
                        pvalue = d["attributes"]["choices"][int(pvalue)]
                    params[pname] = pvalue
                a, dt = _param(params, _ALPHA_KEYS), _param(params, _DELTA_KEYS)
                if a is not None and dt is not None and _num(value) is not None:
                    trials.append((float(a), float(dt), float(value)))
            if trials:
                studies.append(Study(name, source, trials))
        return studies
    finally:
        con.close()


def _read_optuna_url(url: str) -> list[Study]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies = []
    for s in optuna.get_all_study_summaries(storage=url):
        study = optuna.load_study(study_name=s.study_name, storage=url)
        trials = []
        for t in study.trials:
            if t.state != optuna.trial.TrialState.COMPLETE or _num(t.value) is None:
                continue
            a, dt = _param(t.params, _ALPHA_KEYS), _param(t.params, _DELTA_KEYS)
            if a is not None and dt is not None:
                trials.append((float(a), float(dt), float(t.value)))
        if trials:
            studies.append(Study(s.study_name, url, trials))
    return studies


def alpha_deltaT_optuna(studies: Sequence[Study], out_dir: Path) -> list[Path]:
    written: list[Path] = []
    for st in studies:
        a = np.array([t[0] for t in st.trials])
        dt = np.array([t[1] for t in st.trials])
        v = np.array([t[2] for t in st.trials])
        percent = bool(np.all(v <= 1.0))
        if percent:
            v = 100.0 * v
        path = out_dir / f"tuning_alpha_deltaT_optuna_{slug(st.name)}.png"
        if path in written:  # the same study name in two databases
            path = path.with_name(
                f"tuning_alpha_deltaT_optuna_{slug(Path(st.source).stem, st.name)}.png"
            )
        with _figure(path, written, figsize=(7.0, 5.0)) as fig:
            ax = fig.subplots()
            if len(v) >= 4:
                # collinear points have no triangulation: then the scatter alone
                with contextlib.suppress(Exception):
                    ax.tricontourf(dt, a, v, levels=12, cmap="viridis", alpha=0.55)
            sc = ax.scatter(dt, a, c=v, cmap="viridis", s=70, edgecolors="black", zorder=3)
            best = int(np.argmax(v))
            ax.scatter([dt[best]], [a[best]], marker="*", s=380, c="red", edgecolors="black",
                       zorder=4, label=f"best: α={a[best]:.3g}, ΔT={dt[best]:g} ({v[best]:.2f})")  # fmt: skip
            for x, y, val in zip(dt, a, v):
                ax.annotate(
                    f"{val:.1f}", (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8
                )
            fig.colorbar(sc, ax=ax, label="Objective: val. accuracy" + (" (%)" if percent else ""))
            for lo, hi, setter in (
                (dt.min(), dt.max(), ax.set_xlim),
                (a.min(), a.max(), ax.set_ylim),
            ):
                pad = 0.08 * (hi - lo) if hi > lo else 0.1 * abs(hi) + 1e-3
                setter(lo - pad, hi + pad)
            ax.set_xlabel("ΔT (update interval, steps)")
            ax.set_ylabel("α (initial update fraction)")
            ax.set_title(f"Optuna study {st.name}\n{len(v)} completed trials")
            ax.legend(loc="best")
    return written


def lr_grid(groups: Sequence[Group], out_dir: Path) -> list[Path]:
    written: list[Path] = []
    for (ds, model), gs in _by(groups, _ds_model).items():
        panels = {
            k: v
            for k, v in _by([g for g in gs if g.lr is not None], _tuning_key).items()
            if len({g.lr for g in v}) >= 2
        }
        if not panels:
            continue
        n = len(panels)
        ncol = min(n, 3)
        nrow = math.ceil(n / ncol)
        path = out_dir / f"tuning_lr_{slug(ds, model)}.png"
        with _figure(path, written, figsize=(5.2 * ncol, 4.2 * nrow), layout="constrained") as fig:
            axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
            for ax, ((_, _, _, _, d, _, redist), pg) in zip(axes, panels.items()):
                settings = sorted({(g.prune_rate, g.interval) for g in pg}, key=str)
                for alpha, delta in settings:
                    rows = sorted((g for g in pg if (g.prune_rate, g.interval) == (alpha, delta)),
                                  key=lambda g: g.lr)  # fmt: skip
                    ms = [g.test_acc() for g in rows]
                    name = f"α={alpha:g}, ΔT={delta}" if alpha is not None else "fixed mask"
                    ax.errorbar([g.lr for g in rows], [m for m, _ in ms], yerr=[s for _, s in ms],
                                marker="o", capsize=3, label=name)  # fmt: skip
                lrs = sorted({g.lr for g in pg})
                ax.set_xscale("log")
                ax.set_xticks(lrs)
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
                ax.set_xlabel("Learning rate")
                ax.set_ylabel("Test accuracy (%)")
                title = pg[0].base_label + (f", redist. {redist}" if redist != "none" else "")
                ax.set_title(f"{title} · {_dlabel(d)}")
                ax.legend(loc="best", fontsize=9)
            for ax in axes[n:]:
                ax.set_visible(False)
            fig.suptitle(_title(ds, model, "learning-rate grid (mean ± std over seeds)"))
    return written


# --------------------------------------------------------------------------------------- FLOPs
def erk_vs_random_flops(groups: Sequence[Group], out_dir: Path) -> list[Path]:
    written: list[Path] = []
    init_color = {"ERK": "tab:blue", "Random": "tab:orange", "ER": "tab:green"}
    for (ds, model), gs in _by(groups, _ds_model).items():
        gs = [g for g in gs if g.init in init_color and g.train_flops is not None]
        families = _by(gs, lambda g: (g.method, g.training_multiplier, g.redistribution))
        families = {k: v for k, v in families.items() if {"ERK", "Random"} <= {g.init for g in v}}
        if not families:
            continue
        path = out_dir / f"erk_vs_random_flops_{slug(ds, model)}.png"
        styles = ["-", "--", "-.", ":"]
        markers = ["o", "s", "^", "D", "v", "P"]
        with _figure(path, written, figsize=(11.0, 4.4)) as fig:
            ax_t, ax_i = fig.subplots(1, 2)
            for fi, ((method, tm, redist), fam) in enumerate(families.items()):
                mname = method + (f"_{tm}x" if tm != 1 else "")
                mname += f", redist. {redist}" if redist != "none" else ""
                for init in ("Random", "ER", "ERK"):
                    rows = sorted((g for g in fam if g.init == init), key=lambda g: g.density)
                    rows = list({g.density: g for g in rows}.values())  # one point per density
                    if not rows:
                        continue
                    kw = dict(color=init_color[init], ls=styles[fi % 4], marker=markers[fi % 6],
                              label=f"{mname} ({init})")  # fmt: skip
                    ax_t.plot([g.density for g in rows], [g.train_flops for g in rows], **kw)
                    test = [(g.density, g.test_flops) for g in rows if g.test_flops is not None]
                    if test:
                        ax_i.plot(*zip(*test), **kw)
            densities = [g.density for fam in families.values() for g in fam]
            for ax, what in ((ax_t, "Training"), (ax_i, "Inference")):
                _density_axis(ax, densities)
                ax.set_ylabel(f"{what} FLOPs (× dense)")
                ax.set_title(f"{what} FLOPs")
            fig.suptitle(_title(ds, model, "ERK vs Random: measured FLOPs per density"))
            _fig_legend(fig, [ax_t, ax_i])
    return written


@functools.lru_cache(maxsize=32)
def _traced_layer_flops(model: str, dataset: str, width: float) -> dict[str, float] | None:
    """Dense forward FLOPs per masked layer, traced on the meta device (static model facts, no
    data files); None when the model or data set is unknown here."""
    try:
        import torch

        from sparsetrain import models
        from sparsetrain.data import dataset_info
        from sparsetrain.flops import dense_layer_flops

        info = dataset_info(dataset)
        with torch.device("meta"):
            net = models.build(model, info, width=width)
        return {
            k: float(v)
            for k, v in dense_layer_flops(net, (info.in_channels, *info.image_size)).items()
        }
    except Exception:
        return None


def _inference_series(run: Run) -> tuple[list[float], list[float]] | None:
    """Inference FLOPs (× dense) after each mask update, from the first source that has them:
    `test_flops` on the mask_update lines; their `layer_densities` weighted by the summary's
    `dense_layer_flops` {layer: FLOPs}; or weighted by the model's traced dense layer FLOPs
    (layers without a density count as dense, as in the FLOPs accountant)."""
    ups = [r for r in run.records("mask_update") if _num(r.get("step")) is not None]
    pts = [
        (float(r["step"]), float(r["test_flops"]))
        for r in ups
        if _num(r.get("test_flops")) is not None
    ]
    if not pts and ups:
        dlf = run.summary.get("dense_layer_flops")
        if isinstance(dlf, dict) and dlf:
            dlf = {k: float(v) for k, v in dlf.items() if _num(v) is not None}
        else:
            width = _num(run.summary.get("width")) or 1.0
            dlf = _traced_layer_flops(run.model, run.dataset, width)
        total = sum(dlf.values()) if dlf else 0.0
        for r in ups:
            ld = r.get("layer_densities")
            if not (isinstance(ld, dict) and total > 0 and set(ld) <= set(dlf)):
                continue
            dens = {k: _num(v) for k, v in ld.items()}
            f = sum(
                f_l * (dens.get(k) if dens.get(k) is not None else 1.0) for k, f_l in dlf.items()
            )
            pts.append((float(r["step"]), f / total))
    if not pts:
        return None
    pts.sort()
    return [p[0] for p in pts], [p[1] for p in pts]


def redist_inference_flops(groups: Sequence[Group], out_dir: Path, palette: Palette) -> list[Path]:
    written: list[Path] = []
    for (ds, model, d), gs in _by(groups, _ds_model_density).items():
        if not any(g.redistribution != "none" for g in gs):
            continue
        # dynamic sparse methods only: what redistribution changes is a sparse mask's layout
        skip = STATIC_METHODS | DENSE_MODELS | {"Pruning"}
        gs = sorted((g for g in gs if g.method not in skip), key=lambda g: g.sort_key)
        curves = {}
        for g in gs:
            series = [s for s in (_inference_series(r) for r in g.runs) if s]
            if series:
                curves[id(g)] = _mean_series(series)
        if not any(id(g) in curves for g in gs if g.redistribution != "none"):
            continue
        path = out_dir / f"redist_inference_flops_{slug(ds, model, f'd{d:g}')}.png"
        with _figure(path, written, figsize=(7.5, 4.8)) as fig:
            ax = fig.subplots()
            n = 0
            dashes = ["--", "-.", ":", (0, (5, 1, 1, 1, 1, 1))]
            for g in gs:
                label = g.display_label
                redist = g.redistribution != "none"
                if redist and "redist" not in label:
                    label += f" · redist. {g.redistribution}"
                # redistribution: thick solid; the rest: distinct dashes so equal values stay visible
                kw = dict(color=palette(g.display_label), lw=2.6 if redist else 1.8,
                          ls="-" if redist else dashes[n % len(dashes)], zorder=3 if redist else 2)  # fmt: skip
                if id(g) in curves:
                    steps, m, _ = curves[id(g)]
                    ax.plot(steps, m, label=label, drawstyle="steps-post", **kw)
                    n += 1
                elif g.test_flops is not None:
                    ax.axhline(g.test_flops, label=f"{label} (final)", **kw)
                    n += 1
            ax.set_xlabel("Training step")
            ax.set_ylabel("Inference FLOPs (× dense)")
            ax.set_ylim(bottom=0)
            ax.set_title(
                _title(ds, model, _dlabel(d), "inference FLOPs with / without redistribution")
            )
            _legend(ax, n)
    return written
