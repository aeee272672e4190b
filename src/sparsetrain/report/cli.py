"""`sparsetrain report [RUNS_DIR ...] [--out DIR]`: tables and figures from run directories.

Reads only what runs leave behind (`summary.json`, `metrics.jsonl`, `.hydra/config.yaml`) and
Optuna sqlite studies (`*.db` under RUNS_DIR, or `--optuna-db`). Writes into `--out`:
`results.csv`, `results.md`, `results.tex`, `inference_stats.md` and `plots/*.png`.

Exit codes: 0 done (unusable run directories are skipped with one warning line each; figures
without data are skipped with one info line each); 2 bad arguments, a RUNS_DIR that does not
exist, or no usable run (nor Optuna study) under the RUNS_DIRs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from sparsetrain.report import aggregate, flops_check, plots, tables
from sparsetrain.report.runs import collect_runs, find_optuna_dbs

PARTS = {
    "tables": "results.csv, results.md, results.tex",
    "inference_stats": "inference_stats.md (train / test FLOPs per method and density)",
    "flops_check": "flops_check.md (measured training FLOPs vs the closed forms, per run)",
    "accuracy": "accuracy vs density and accuracy vs training FLOPs",
    "layers": "layer-wise density bars",
    "curves": "training loss and validation accuracy curves",
    "churn": "mask churn per update and ITOP rate",
    "tuning": "α / ΔT heatmaps (grid runs and Optuna studies)",
    "lr": "learning-rate grid",
    "erk_vs_random": "ERK vs Random FLOPs per density",
    "redist": "inference FLOPs with / without redistribution",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sparsetrain report",
        description="Aggregate run directories (mean ± sample std over seeds) into tables and "
        "PNG figures.",
        epilog="Parts for --only: " + "; ".join(f"{k}: {v}" for k, v in PARTS.items()),
    )
    p.add_argument("runs", nargs="*", metavar="RUNS_DIR", default=None,
                   help="directories searched recursively for runs (default: outputs)")  # fmt: skip
    p.add_argument("--out", default="results", metavar="DIR",
                   help="output directory (default: results)")  # fmt: skip
    p.add_argument("--only", default="", metavar="PART[,PART]",
                   help="produce only these parts (default: all)")  # fmt: skip
    p.add_argument("--dataset", action="append", default=[], metavar="NAME",
                   help="keep only runs of this data set (repeatable; case and '-' ignored)")  # fmt: skip
    p.add_argument("--optuna-db", action="append", default=[], metavar="PATH|URL",
                   help="Optuna storage for the α/ΔT heatmap (repeatable); *.db files under "
                   "RUNS_DIR are used too")  # fmt: skip
    p.add_argument("--study", action="append", default=[], metavar="NAME",
                   help="only these Optuna studies (repeatable)")  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="no info lines")
    return p


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return int(e.code or 0)

    parts = [p.strip() for p in args.only.split(",") if p.strip()] or list(PARTS)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        _err(f"error: unknown part {unknown[0]!r} for --only; valid choices: {', '.join(PARTS)}")
        return 2

    roots = [Path(r) for r in (args.runs or ["outputs"])]
    for root in roots:
        if not root.is_dir():
            _err(f"error: runs directory {str(root)!r} does not exist (nothing to report)")
            return 2

    warn: Callable[[str], None] = lambda m: _err(f"warning: {m}")  # noqa: E731
    info: Callable[[str], None] = (lambda m: None) if args.quiet else (lambda m: _err(f"info: {m}"))

    runs, n_found, n_skipped = collect_runs(roots, warn, datasets=args.dataset or None)

    studies: list[plots.Study] = []
    if "tuning" in parts:
        sources = list(args.optuna_db) + [p for r in roots for p in find_optuna_dbs(r)]
        seen = set()
        for src in sources:
            text = str(src).removeprefix("sqlite:///")
            key = str(Path(text).resolve()) if "://" not in text else text
            if key in seen:
                continue
            seen.add(key)
            for st in plots.load_optuna_studies(src, warn):
                if not args.study or st.name in args.study:
                    studies.append(st)

    where = ", ".join(str(r) for r in roots)
    what = f" for data set {', '.join(args.dataset)}" if args.dataset else ""
    if not runs and not studies:
        if n_found == 0:
            _err(f"error: no run directories (with summary.json){what} under {where}")
        else:
            _err(f"error: no usable runs{what} under {where}: all {n_found} run directories "
                 "were skipped (see the warnings above)")  # fmt: skip
        return 2

    out = Path(args.out)
    plot_dir = out / "plots"
    out.mkdir(parents=True, exist_ok=True)
    groups = aggregate.group_runs(runs)
    written: list[Path] = []

    if "tables" in parts and groups:
        written.append(aggregate.write_csv(groups, out / "results.csv"))
        (out / "results.md").write_text(
            tables.markdown(groups, len(runs), n_skipped), encoding="utf-8"
        )
        (out / "results.tex").write_text(tables.latex(groups), encoding="utf-8")
        written += [out / "results.md", out / "results.tex"]
    if "inference_stats" in parts and groups:
        text = tables.inference_stats(groups)
        (out / "inference_stats.md").write_text(text, encoding="utf-8")
        written.append(out / "inference_stats.md")
        if parts == ["inference_stats"]:
            print(text)

    if "flops_check" in parts and runs:
        text = flops_check.markdown(runs, warn)
        if text is not None:
            (out / "flops_check.md").write_text(text, encoding="utf-8")
            written.append(out / "flops_check.md")

    main = [g for g in groups if g.primary]  # tuning settings only in tuning figures
    palette = plots.Palette(g.display_label for g in main)
    jobs: list[tuple[str, str, Callable[[], list[Path]]]] = []

    def job(part: str, name: str, why: str, fn: Callable[[], list[Path]]) -> None:
        if part in parts:
            jobs.append((name, why, fn))

    job("accuracy", "accuracy vs density", "no method was run at two or more densities",
        lambda: plots.accuracy_vs_density(main, plot_dir, palette))  # fmt: skip
    job("accuracy", "accuracy vs training FLOPs", "no summary.json has train_flops",
        lambda: plots.accuracy_vs_train_flops(main, plot_dir, palette))  # fmt: skip
    job("layers", "layer-wise density", "no summary.json layer_densities and no mask_update lines",
        lambda: plots.layer_densities(main, plot_dir, palette))  # fmt: skip
    job("curves", "training curves", "no train / eval lines in any metrics.jsonl",
        lambda: plots.training_curves(main, plot_dir, palette))  # fmt: skip
    job("churn", "mask churn / ITOP", "no mask_update lines in any metrics.jsonl",
        lambda: plots.mask_churn(main, plot_dir, palette))  # fmt: skip
    job("tuning", "α/ΔT heatmap",
        "no Optuna study (*.db, --optuna-db) and no runs at two or more (α, ΔT) settings",
        lambda: plots.alpha_deltaT_grid(groups, plot_dir) + plots.alpha_deltaT_optuna(studies, plot_dir))  # fmt: skip
    job("lr", "learning-rate grid", "no configuration was run at two or more learning rates",
        lambda: plots.lr_grid(groups, plot_dir))  # fmt: skip
    job("erk_vs_random", "ERK vs Random FLOPs",
        "no method was run with both ERK and Random init (with train_flops in summary.json)",
        lambda: plots.erk_vs_random_flops(main, plot_dir))  # fmt: skip
    job("redist", "inference FLOPs with/without redistribution",
        "no dynamic sparse run with redistribution (masking.redistribution_mode) and mask_update lines",
        lambda: plots.redist_inference_flops(main, plot_dir, palette))  # fmt: skip

    n_plots = 0
    if jobs:
        plot_dir.mkdir(parents=True, exist_ok=True)
    for name, why, fn in jobs:
        try:
            files = fn()
        except Exception as e:  # one broken figure must not cost the others
            warn(f"could not draw {name}: {e.__class__.__name__}: {e}")
            continue
        if not files:
            info(f"skipped plot '{name}': {why}")
        n_plots += len(files)
        written += files

    for path in written:
        print(f"wrote {path}")
    print(
        f"report: {len(runs)} runs in {len(groups)} groups"
        + (f", {n_skipped} run directories skipped" if n_skipped else "")
        + f", {n_plots} plots → {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
