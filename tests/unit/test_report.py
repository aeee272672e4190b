"""`sparsetrain report`: aggregation numbers, tables, skipping bad runs, and every figure.

Run directories are written through `RunWriter` (the trainer's writer) plus a minimal
`.hydra/config.yaml`, laid out as the trainer does: outputs/<dataset>/<exp_name>/<density>/<overrides>.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from sparsetrain.report import cli
from sparsetrain.report.aggregate import group_runs, mean_std, method_label
from sparsetrain.report.runs import collect_runs
from sparsetrain.train.results import RunWriter

LAYERS = ("conv1.weight", "conv2.weight", "fc3.weight", "fc4.weight")  # the masked lenet5 layers
INIT_NAMES = {"ERK": "erdos-renyi-kernel", "Random": "random"}


def make_run(
    root: Path,
    *,
    method: str = "RigL",
    init: str = "ERK",
    density: float = 0.2,
    seed: int = 0,
    test_acc: float = 0.9,
    val_acc: float | None = 0.91,
    tm: int = 1,
    lr: float = 0.05,
    alpha: float = 0.3,
    delta_t: int = 100,
    redist: str = "none",
    train_flops: float | None = 0.35,
    test_flops: float | None = 0.35,
    summary_density: float | None = None,
    final_density: float | None = None,
    steps: int = 1000,
    dataset: str = "FashionMNIST",
    model: str = "lenet5",
    curves: bool = True,
    flops_in_updates: bool = True,
    status: str | None = "completed",
) -> Path:
    """One fake-but-valid run directory; returns its path."""
    exp = method if method in ("Dense", "Small_Dense", "Pruning") else f"{method}_{init}"
    over = f"masking.interval={delta_t},masking.prune_rate={alpha},optimizer.lr={lr},seed={seed}"
    if tm != 1:
        over = f"optimizer.training_multiplier={tm}," + over
    if redist != "none":
        over = f"masking.redistribution_mode={redist}," + over
    run_dir = root / dataset / exp / str(density) / over
    cfg = {
        "dataset": {"name": dataset},
        "model": model,
        "seed": seed,
        "exp_name": "${run_label:${masking.name},${masking.sparse_init},${masking.dense}}",
        "optimizer": {"lr": lr, "training_multiplier": tm, "epochs": 5},
        "masking": {
            "name": method, "density": density, "sparse_init": INIT_NAMES[init],
            "prune_rate": alpha, "interval": delta_t, "redistribution_mode": redist,
            "final_density": final_density,
        },
    }  # fmt: skip
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(cfg), run_dir / ".hydra" / "config.yaml")

    w = RunWriter(run_dir)
    rng = np.random.default_rng(seed + int(1000 * density) + 7 * tm)
    target = {name: min(1.0, density * f) for name, f in zip(LAYERS, (3.0, 1.2, 0.6, 2.5))}
    if curves:
        for step in range(50, steps + 1, 50):
            loss = 2.3 * math.exp(-step / 300) + 0.3 + 0.02 * rng.standard_normal()
            w.log("train", step=step, epoch=step // 200, loss=loss, acc=1 - loss / 3, lr=lr,
                  density=density)  # fmt: skip
            if step % 200 == 0:
                acc = test_acc - 0.2 * math.exp(-step / 300)
                w.log("eval", step=step, epoch=step // 200, val_loss=loss, test_loss=loss,
                      val_acc=None if val_acc is None else acc + 0.005, test_acc=acc)  # fmt: skip
        if method in ("RigL", "SET", "SNFS"):
            itop = density
            for k, step in enumerate(range(delta_t, int(0.75 * steps) + 1, delta_t)):
                frac = alpha / 2 * (1 + math.cos(math.pi * step / (0.75 * steps)))
                itop = min(1.0, itop + frac * density * 0.8)
                lds = dict(target)
                if redist != "none":  # redistribution moves density towards the last layers
                    shift = 0.02 * (k + 1)
                    lds = {"conv1.weight": target["conv1.weight"] - shift,
                           "conv2.weight": target["conv2.weight"] + shift / 2,
                           "fc3.weight": target["fc3.weight"], "fc4.weight": target["fc4.weight"]}  # fmt: skip
                extra = {}
                if flops_in_updates:
                    extra["test_flops"] = (test_flops or density) * (
                        1 + 0.04 * k if redist != "none" else 1
                    )
                w.log("mask_update", step=step, epoch=step // 200, density=density,
                      changed_fraction=frac, itop_rate=itop, layer_densities=lds, **extra)  # fmt: skip
    summary = {
        "method": method, "init": init, "density": summary_density or density,
        "dataset": dataset, "model": model, "seed": seed, "epochs": 5, "steps": steps * tm,
        "training_multiplier": tm, "val_accuracy": val_acc, "test_accuracy": test_acc,
        "train_flops": train_flops, "test_flops": test_flops, "wall_seconds": 12.5,
        "layer_densities": target, "status": status, "width": 1.0,
    }  # fmt: skip
    w.write_summary(summary)
    return run_dir


MAIN_ACC = {  # (init, density, tm) -> test accuracies of seeds 0, 1, ...
    ("ERK", 0.2, 1): [0.90, 0.91, 0.93],
    ("Random", 0.2, 1): [0.88, 0.885],
    ("ERK", 0.1, 1): [0.87, 0.875],
    ("Random", 0.1, 1): [0.86],
    ("ERK", 0.2, 2): [0.925],
}


def make_main_runs(root: Path) -> Path:
    flops = {("ERK", 1): (0.35, 0.35), ("Random", 1): (0.21, 0.20), ("ERK", 2): (0.70, 0.35)}
    for (init, d, tm), accs in MAIN_ACC.items():
        tr, te = flops[(init, tm)]
        for seed, acc in enumerate(accs):
            make_run(root, init=init, density=d, tm=tm, seed=seed, test_acc=acc,
                     val_acc=acc + 0.01, train_flops=tr * d / 0.2, test_flops=te * d / 0.2)  # fmt: skip
    make_run(root, method="SNFS", init="Random", alpha=0.5, redist="momentum", test_acc=0.895,
             train_flops=0.47, test_flops=0.20)  # fmt: skip
    make_run(root, method="SNFS", init="Random", alpha=0.5, redist="none", seed=0, test_acc=0.89,
             train_flops=0.47, test_flops=0.20)  # fmt: skip
    make_run(root, method="Dense", init="Random", density=1.0, test_acc=0.92,
             train_flops=1.0, test_flops=1.0)  # fmt: skip
    # Small_Dense: a dense model sized for density 0.2 (its measured density is 1.0)
    make_run(root, method="Small_Dense", init="Random", summary_density=1.0, test_acc=0.86,
             train_flops=0.2, test_flops=0.2)  # fmt: skip
    make_run(root, method="Pruning", init="Random", density=1.0, final_density=0.2,
             test_acc=0.915, train_flops=0.41, test_flops=0.27)  # fmt: skip
    return root


def make_grid_runs(root: Path) -> Path:
    for lr in (0.1, 0.02, 0.01):
        for alpha, dt in ((0.3, 100), (0.4, 200), (0.5, 100), (0.3, 200)):
            for seed in (0, 1):
                acc = 0.9 - abs(lr - 0.05) * 0.3 - abs(alpha - 0.4) * 0.05 + dt * 1e-5 + seed * 1e-3
                make_run(root, lr=lr, alpha=alpha, delta_t=dt, seed=seed, test_acc=acc,
                         val_acc=acc + 0.002, curves=False)  # fmt: skip
    return root


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------- aggregation
def test_mean_std_is_sample_std():
    assert mean_std([1.0]) == (1.0, 0.0)
    m, s = mean_std([90.0, 91.0, 93.0])
    assert m == pytest.approx(np.mean([90, 91, 93]), abs=1e-12)
    assert s == pytest.approx(np.std([90, 91, 93], ddof=1), abs=1e-12)


def test_labels_match_reference_table():
    assert method_label("RigL", "Random") == "RigL"
    assert method_label("RigL", "ERK") == "RigL (ERK)"
    assert method_label("RigL", "ERK", 2) == "RigL_2x (ERK)"
    assert method_label("RigL", "Random", 2) == "RigL_2x"
    assert method_label("Small_Dense", "-") == "Small Dense"
    assert method_label("SET", "ERK") == "SET (ERK)"
    assert method_label("Pruning", "-") == "Pruning"


def test_aggregation_numbers_exact(tmp_path):
    make_main_runs(tmp_path)
    warnings: list[str] = []
    runs, n_found, n_skipped = collect_runs([tmp_path], warnings.append)
    assert warnings == [] and n_skipped == 0 and n_found == len(runs) == 14
    groups = {(g.label, g.density): g for g in group_runs(runs)}
    for (init, d, tm), accs in MAIN_ACC.items():
        g = groups[(method_label("RigL", init, tm), d)]
        pct = [100 * a for a in accs]
        assert g.n_seeds == len(accs)
        mean, std = g.test_acc()
        assert mean == pytest.approx(np.mean(pct), abs=1e-9)
        assert std == pytest.approx(np.std(pct, ddof=1) if len(pct) > 1 else 0.0, abs=1e-9)
        assert g.val_acc()[0] == pytest.approx(np.mean(pct) + 1.0, abs=1e-9)
    # nominal densities from the config: Small_Dense and Pruning land in the 0.2 table
    assert groups[("Small Dense", 0.2)].test_acc() == (pytest.approx(86.0), 0.0)
    assert groups[("Pruning", 0.2)].test_flops == pytest.approx(0.27)
    # SNFS with and without redistribution are kept apart and named by what differs
    assert groups[("SNFS", 0.2)].redistribution == "momentum"  # SNFS's default: plain name
    assert groups[("SNFS · no redist.", 0.2)].test_acc()[0] == pytest.approx(89.0)


def test_csv_columns_and_values(tmp_path):
    make_main_runs(tmp_path / "runs")
    assert (
        cli.main([str(tmp_path / "runs"), "--out", str(tmp_path / "res"), "--only", "tables"]) == 0
    )
    rows = _read_csv(tmp_path / "res" / "results.csv")
    required = [
        "dataset", "model", "method", "init", "density", "training_multiplier", "n_seeds",
        "test_acc_mean", "test_acc_std", "val_acc_mean", "train_flops", "test_flops",
    ]  # fmt: skip
    assert set(required) <= set(rows[0])
    row = next(r for r in rows if r["label"] == "RigL (ERK)" and r["density"] == "0.2")
    assert (row["dataset"], row["model"], row["method"], row["init"]) == (
        "FashionMNIST",
        "lenet5",
        "RigL",
        "ERK",
    )
    assert row["n_seeds"] == "3" and row["seeds"] == "0;1;2" and row["training_multiplier"] == "1"
    assert float(row["test_acc_mean"]) == pytest.approx(np.mean([90.0, 91.0, 93.0]), abs=1e-9)
    assert float(row["test_acc_std"]) == pytest.approx(np.std([90.0, 91.0, 93.0], ddof=1), abs=1e-9)
    assert float(row["train_flops"]) == pytest.approx(0.35)
    one = next(r for r in rows if r["label"] == "RigL" and r["density"] == "0.1")
    assert one["n_seeds"] == "1" and float(one["test_acc_std"]) == 0.0


def test_markdown_table_format(tmp_path):
    make_main_runs(tmp_path / "runs")
    assert (
        cli.main([str(tmp_path / "runs"), "--out", str(tmp_path / "res"), "--only", "tables"]) == 0
    )
    md = (tmp_path / "res" / "results.md").read_text()
    assert "### FashionMNIST · lenet5 · density 0.2 (80% sparsity)" in md
    lines = [line.strip() for line in md.splitlines()]
    start = lines.index("### FashionMNIST · lenet5 · density 0.2 (80% sparsity)")
    header = next(i for i in range(start, len(lines)) if lines[i].startswith("| Method"))
    assert [c.strip() for c in lines[header].strip("|").split("|")] == [
        "Method", "Accuracy (Test)", "FLOPs (Train, Test)", "Seeds"]  # fmt: skip

    def row(label: str) -> list[str]:
        hit = next(x for x in lines[header:] if x.startswith(f"| {label} "))
        return [c.strip() for c in hit.strip("|").split("|")]

    s = np.std([90.0, 91.0, 93.0], ddof=1)
    assert row("RigL (ERK)") == ["RigL (ERK)", f"91.33 ± {s:.2f}", "0.35x, 0.35x", "3"]
    assert row("RigL_2x (ERK)") == ["RigL_2x (ERK)", "92.50 ± 0.00", "0.70x, 0.35x", "1"]
    assert row("RigL") == ["RigL", "88.25 ± 0.35", "0.21x, 0.20x", "2"]
    assert row("Dense") == ["Dense", "92.00 ± 0.00", "1.00x, 1.00x", "1"]
    assert row("Small Dense")[1:3] == ["86.00 ± 0.00", "0.20x, 0.20x"]
    assert row("Pruning")[2] == "0.41x, 0.27x"
    # reference order: Dense, Small Dense, ..., Pruning, RigL, RigL (ERK), RigL_2x (ERK)
    order = [x.split("|")[1].strip() for x in lines[header + 2 : header + 10]]
    assert order[:2] == ["Dense", "Small Dense"]
    assert order.index("RigL") < order.index("RigL (ERK)") < order.index("RigL_2x (ERK)")
    assert "test accuracy by density" in md  # the method x density matrix (two densities)
    tex = (tmp_path / "res" / "results.tex").read_text()
    assert r"RigL\_2x (ERK) & 92.50 $\pm$ 0.00 & 0.70$\times$, 0.35$\times$ & 1 \\" in tex
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 2


# ---------------------------------------------------------------------------- robustness
def test_corrupt_and_incomplete_runs_are_skipped_with_one_warning_each(tmp_path, capsys):
    root = tmp_path / "runs"
    make_run(root, seed=0, test_acc=0.9)
    make_run(root, seed=1, test_acc=0.8)
    torn = make_run(root, seed=2)  # killed before the summary: metrics only
    (torn / "summary.json").unlink()
    bad_json = make_run(root, seed=3)
    (bad_json / "summary.json").write_text('{"method": "RigL", "test_acc')
    no_acc = make_run(root, seed=4, test_acc=float("nan"))  # NaN is written as null
    diverged = make_run(root, seed=7, status="diverged")
    garbage = make_run(root, seed=5)
    (garbage / "summary.json").write_bytes(b"\xff\xfe\x00garbage")
    only_cfg = make_run(root, seed=6)  # crashed at start-up: .hydra only
    for name in ("summary.json", "metrics.jsonl"):
        (only_cfg / name).unlink()

    assert cli.main([str(root), "--out", str(tmp_path / "res"), "--only", "tables", "-q"]) == 0
    err = capsys.readouterr().err.splitlines()
    warnings = [line for line in err if line.startswith("warning:")]
    assert len(warnings) == 6, err
    for d in (torn, bad_json, no_acc, garbage, only_cfg, diverged):
        assert sum(str(d) in w for w in warnings) == 1
    rows = _read_csv(tmp_path / "res" / "results.csv")
    assert len(rows) == 1 and rows[0]["n_seeds"] == "2"
    assert float(rows[0]["test_acc_mean"]) == pytest.approx(85.0)
    assert float(rows[0]["test_acc_std"]) == pytest.approx(np.std([90.0, 80.0], ddof=1))


def test_empty_or_missing_directory_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main([str(tmp_path / "empty"), "--out", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run directories" in err[0] and str(tmp_path / "empty") in err[0]
    assert cli.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    assert not (tmp_path / "res").exists()
    assert cli.main(["--only", "bogus", str(tmp_path)]) == 2


def test_all_runs_corrupt_exits_2(tmp_path, capsys):
    d = make_run(tmp_path)
    (d / "summary.json").write_text("[]")
    assert cli.main([str(tmp_path), "--out", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("warning:") and err[-1].startswith("error: no usable runs")


# -------------------------------------------------------------------------------- figures
def _optuna_db(path: Path) -> Path:
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="fmnist-alpha-deltaT-erdos-renyi-kernel-density-0.2", direction="maximize",
        storage=f"sqlite:///{path}", sampler=optuna.samplers.TPESampler(seed=123),
    )  # fmt: skip

    def objective(trial):
        a = trial.suggest_float("masking.prune_rate", 0.1, 0.6)
        dt = trial.suggest_int("masking.interval", 50, 1000, step=50)
        return 0.9 - (a - 0.35) ** 2 - ((dt - 300) / 3000) ** 2

    study.optimize(objective, n_trials=8)
    return path


def test_every_plot_is_produced(tmp_path, capsys):
    runs = tmp_path / "outputs"
    make_main_runs(runs)
    make_grid_runs(runs / "grid")
    (runs / "databases").mkdir()
    _optuna_db(runs / "databases" / "alpha_deltaT.db")
    out = tmp_path / "results"
    assert cli.main([str(runs), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err and "info" not in captured.err, captured.err
    plots = {p.name for p in (out / "plots").glob("*.png")}
    expected = {
        "accuracy_vs_density_FashionMNIST_lenet5.png",
        "accuracy_vs_train_flops_FashionMNIST_lenet5.png",
        "layer_densities_FashionMNIST_lenet5_d0.2.png",
        "layer_densities_FashionMNIST_lenet5_d0.1.png",
        "curves_FashionMNIST_lenet5_d0.2.png",
        "mask_churn_FashionMNIST_lenet5_d0.2.png",
        "tuning_alpha_deltaT_FashionMNIST_lenet5_RigL_ERK_d0.2.png",
        "tuning_alpha_deltaT_optuna_fmnist-alpha-deltaT-erdos-renyi-kernel-density-0.2.png",
        "tuning_lr_FashionMNIST_lenet5.png",
        "erk_vs_random_flops_FashionMNIST_lenet5.png",
        "redist_inference_flops_FashionMNIST_lenet5_d0.2.png",
    }
    assert expected <= plots, expected - plots
    for name in expected:
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("results.csv", "results.md", "results.tex", "inference_stats.md"):
        assert (out / name).stat().st_size > 0


def test_plots_without_data_are_skipped_with_one_info_line(tmp_path, capsys):
    make_run(tmp_path / "runs", curves=False)  # one run: no curves, one density, no grids
    assert cli.main([str(tmp_path / "runs"), "--out", str(tmp_path / "res")]) == 0
    err = capsys.readouterr().err.splitlines()
    infos = [line for line in err if line.startswith("info: skipped plot")]
    assert not [line for line in err if line.startswith(("warning", "error"))], err
    for name in ("accuracy vs density", "training curves", "mask churn / ITOP", "α/ΔT heatmap",
                 "learning-rate grid", "ERK vs Random FLOPs"):  # fmt: skip
        assert sum(f"'{name}'" in line for line in infos) == 1, (name, infos)
    # what has data is still drawn: accuracy vs FLOPs and the layer densities from the summary
    names = {p.name for p in (tmp_path / "res" / "plots").glob("*.png")}
    assert names == {"accuracy_vs_train_flops_FashionMNIST_lenet5.png",
                     "layer_densities_FashionMNIST_lenet5_d0.2.png"}  # fmt: skip


def test_dataset_filter_and_nested_runs(tmp_path, capsys):
    make_run(tmp_path, dataset="FashionMNIST")
    make_run(tmp_path, dataset="CIFAR10", model="wrn-22-2", test_acc=0.93)
    out = tmp_path / "res"
    assert (
        cli.main(
            [str(tmp_path), "--out", str(out), "--dataset", "fashion-mnist", "--only", "tables"]
        )
        == 0
    )
    rows = _read_csv(out / "results.csv")
    assert [r["dataset"] for r in rows] == ["FashionMNIST"]
    assert (
        cli.main([str(tmp_path), "--out", str(out), "--dataset", "MNIST", "--only", "tables"]) == 2
    )
    assert "for data set MNIST" in capsys.readouterr().err


def test_redistribution_flops_from_layer_densities(tmp_path, capsys):
    """Without test_flops on mask_update lines, inference FLOPs come from the logged layer
    densities weighted by the model's dense layer FLOPs."""
    root = tmp_path / "runs"
    make_run(root, method="SNFS", init="Random", redist="momentum", flops_in_updates=False)
    make_run(root, method="RigL", init="Random", flops_in_updates=False)
    out = tmp_path / "res"
    assert cli.main([str(root), "--out", str(out), "--only", "redist"]) == 0
    assert (out / "plots" / "redist_inference_flops_FashionMNIST_lenet5_d0.2.png").exists()
    from sparsetrain.report.plots import _inference_series

    runs, _, _ = collect_runs([root], print)
    snfs = next(r for r in runs if r.method == "SNFS")
    steps, flops = _inference_series(snfs)
    assert steps == sorted(steps) and len(steps) == 7
    assert flops[-1] > flops[0]  # density moved to conv2, the costliest layer


def test_multi_seed_subdirectories_use_the_parent_config(tmp_path, capsys):
    """multi_seed runs: one Hydra job dir (.hydra/) with `seed=<s>/` subdirectories."""
    parent = make_run(tmp_path, lr=0.07, redist="momentum", method="SNFS", init="Random")
    for name in ("summary.json", "metrics.jsonl"):
        (parent / name).unlink()
    for seed, acc in ((0, 0.80), (1, 0.82), (2, 0.87)):
        w = RunWriter(parent / f"seed={seed}")
        w.write_summary({"method": "SNFS", "init": "random", "density": 0.2, "seed": seed,
                         "dataset": "FashionMNIST", "model": "lenet5", "test_accuracy": acc,
                         "status": "completed"})  # fmt: skip
    runs, n_found, n_skipped = collect_runs([tmp_path], print)
    assert (n_found, n_skipped) == (3, 0) and capsys.readouterr().out == ""
    (g,) = group_runs(runs)
    assert (g.label, g.lr, g.redistribution, g.n_seeds) == ("SNFS", 0.07, "momentum", 3)
    assert g.test_acc()[1] == pytest.approx(np.std([80.0, 82.0, 87.0], ddof=1))


def test_readme_results_table_is_the_reports():
    """The README's results block is exactly the committed report's accuracy tables
    (`make vis.fmnist` rewrites both), so the two cannot drift apart."""
    from sparsetrain.report.readme import BEGIN, END, accuracy_tables

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    block = readme[readme.index(BEGIN) + len(BEGIN) : readme.index(END)].strip()
    report = (root / "results" / "fashion-mnist" / "results.md").read_text()
    assert block == accuracy_tables(report)


def test_readme_splice_replaces_only_the_marked_block():
    from sparsetrain.errors import SparsetrainError
    from sparsetrain.report.readme import accuracy_tables, splice

    report = (
        "# R\n\n### A · x · test accuracy by density\n\n| M | d |\n|---|---|\n| X | 1 |\n\n## B\n"
    )
    tables = accuracy_tables(report)
    assert tables == "**A · x**\n\n| M | d |\n|---|---|\n| X | 1 |"
    readme = "intro\n<!-- results-table:begin -->\nold\n<!-- results-table:end -->\nrest\n"
    assert splice(readme, tables) == (
        "intro\n<!-- results-table:begin -->\n" + tables + "\n<!-- results-table:end -->\nrest\n"
    )
    with pytest.raises(SparsetrainError, match=r"no .* block"):
        splice("no markers", tables)
    with pytest.raises(SparsetrainError, match="test accuracy by density"):
        accuracy_tables("# nothing here")
