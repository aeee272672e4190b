"""Measured training FLOPs against the closed forms of REFERENCE.md, run by run.

The trainer's FLOPs accountant counts every step as it happens (sparse or dense gradient, the
masks of that moment). The closed forms predict the same number from the run's final masks and
its schedule alone: Static / SET 3 f_S per step; RigL (3 f_S ΔT + 2 f_S + f_D) / (ΔT + 1)
while updates happen, then 3 f_S; × k for RigL_kx (`sparsetrain.flops.report`). The two are
computed independently, so agreement checks the accounting. Methods whose f_S changes during
training (SNFS redistribution, Pruning) have no per-step closed form and are not listed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from statistics import fmean

from sparsetrain.report.aggregate import method_label
from sparsetrain.report.runs import Run
from sparsetrain.report.tables import fmt_density, md_table

#: methods with a fixed per-layer budget, whose training FLOPs have a closed form
CHECKED = ("Static", "SET", "RigL")


def closed_form(run: Run) -> float:
    """The closed-form training FLOPs (relative to dense) of `run`, from its final masks."""
    from sparsetrain import flops

    k = run.training_multiplier
    steps = run.summary.get("steps")
    options = {
        "interval": run.interval or 1,
        "start_when": run.start_when if run.start_when is not None else 0.0,
        "end_when": run.end_when if run.end_when is not None else -1,
        "total_steps": int(steps) // k if steps else None,
    }
    result = flops.report(
        run.model, run.dataset, run.method, run.density, None, k, masks_from=run.path, **options
    )
    return float(result["train"])


def markdown(runs: Sequence[Run], warn: Callable[[str], None]) -> str | None:
    """Table per data set and model: measured vs closed-form training FLOPs, mean over seeds,
    and the largest per-run difference. None when no run has a closed form."""
    rows: dict[tuple[str, str], dict[tuple[str, float], list[tuple[float, float, float]]]] = {}
    no_checkpoint = 0
    for run in runs:
        if run.method not in CHECKED or run.train_flops is None or run.test_flops is None:
            continue
        if not (run.path / "ckpts" / "last.pt").is_file():  # final masks unknown
            no_checkpoint += 1
            continue
        try:
            predicted = closed_form(run)
        except Exception as exc:  # no checkpoint, another model: say so, keep the report
            warn(f"{run.path}: no closed-form FLOPs ({exc})")
            continue
        label = method_label(run.method, run.init, run.training_multiplier, None)
        by_label = rows.setdefault((run.dataset, run.model), defaultdict(list))
        by_label[(label, run.density)].append((run.test_flops, run.train_flops, predicted))
    if not rows:
        return None
    lines = [
        "# Measured training FLOPs vs the closed forms",
        "",
        __doc__.split("\n\n")[1].replace("\n", " ").strip(),
        "",
        "Mean over seeds; max diff: the largest absolute difference, measured − closed form, "
        "of a single run."
        + (
            f" {no_checkpoint} Static/SET/RigL run(s) without `ckpts/last.pt` are not checked."
            if no_checkpoint
            else ""
        ),
        "",
    ]
    header = ["Method", "Density", "Test (f_S)", "Train measured", "Closed form", "max diff"]
    for (dataset, model), by_label in sorted(rows.items()):
        body = [
            [
                label,
                fmt_density(density),
                f"{fmean(v[0] for v in vals):.4f}",
                f"{fmean(v[1] for v in vals):.4f}",
                f"{fmean(v[2] for v in vals):.4f}",
                f"{max(abs(v[1] - v[2]) for v in vals):.1e}",
            ]
            for (label, density), vals in sorted(
                by_label.items(), key=lambda kv: (kv[0][1], kv[0][0])
            )
        ]
        lines += [f"## {dataset} · {model}", "", *md_table(header, body, "llrrrr"), ""]
    return "\n".join(lines).rstrip() + "\n"
