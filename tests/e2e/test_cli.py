"""The `sparsetrain` command end to end on `digits`: entry points, run directory layout,
multi_seed, sweeps, sub-command dispatch and W&B offline logging."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from sparsetrain.cli import main as cli_main
from sparsetrain.train.results import SUMMARY_KEYS, read_metrics, read_summary

REPO = Path(__file__).resolve().parents[2]
FAST = [
    "dataset=digits",
    "model=lenet-300-100",
    "optimizer.epochs=1",
    "progress=false",
    "dataset.max_threads=1",
]


def _run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, **env}
    environ.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=180, env=environ)


@pytest.mark.parametrize(
    "entry",
    [["sparsetrain"], [sys.executable, str(REPO / "main.py")]],
    ids=["console-script", "main.py"],  # (`python -m sparsetrain` runs in the other e2e tests)
)
def test_cfg_job_prints_the_composed_config(entry, tmp_path):
    if entry == ["sparsetrain"] and shutil.which("sparsetrain") is None:
        pytest.skip("console script not installed")
    proc = _run([*entry, "--cfg", "job", "masking=SET"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["model"] == "lenet5" and cfg["dataset"]["name"] == "FashionMNIST"
    assert cfg["masking"]["name"] == "SET" and cfg["optimizer"]["name"] == "SGD"
    assert not list(tmp_path.iterdir())  # printing the config runs nothing, writes nothing


def test_help_names_the_app_its_usage_and_subcommands(tmp_path):
    proc = _run([sys.executable, "-m", "sparsetrain", "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("sparsetrain: train sparse neural networks")
    assert "sparsetrain flops|report|export --help" in proc.stdout
    assert "masking: Dense, Lottery, Pruning, RigL" in proc.stdout  # Hydra's group listing
    assert not list(tmp_path.iterdir())


def test_report_checks_measured_training_flops_against_the_closed_forms(tmp_path):
    """Static and RigL runs: the accountant's training FLOPs equal the closed forms (RigL's
    dense-gradient steps included); a wrong measured figure shows as a large difference.
    (The RigL form spreads updates continuously over [start, end), the accountant counts the
    update steps that happened: ~6e-4 apart in this 84-step run, < 1e-4 in real runs.)"""
    for method in ("Static", "RigL"):
        proc = _run(
            [sys.executable, "-m", "sparsetrain", *FAST, f"masking={method}", "optimizer.epochs=4",
             "masking.interval=10", "masking.end_when=0.5", "masking.density=0.1"],
            tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr

    def table() -> dict[str, list[float]]:
        proc = _run(
            [sys.executable, "-m", "sparsetrain", "report", "outputs", "--out", "rep",
             "--only", "flops_check"],
            tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        text = (tmp_path / "rep" / "flops_check.md").read_text()
        rows = [line for line in text.splitlines() if line.startswith(("| Static", "| RigL"))]
        cells = [line.strip("| ").split(" | ") for line in rows]
        return {c[0].strip(): [float(x) for x in c[2:]] for c in cells}

    rows = table()
    assert set(rows) == {"Static", "RigL (ERK)"}  # Static's default init is uniform
    for _test, measured, closed, diff in rows.values():
        assert abs(measured - closed) < 2e-3 and diff < 2e-3
    assert rows["RigL (ERK)"][1] > rows["RigL (ERK)"][0]  # dense gradients cost extra
    assert rows["Static"][1] == pytest.approx(rows["Static"][0], abs=1e-6)

    summary = next((tmp_path / "outputs").rglob("RigL_ERK/**/summary.json"))
    data = json.loads(summary.read_text())
    data["train_flops"] += 0.05  # an accounting error
    summary.write_text(json.dumps(data))
    assert table()["RigL (ERK)"][3] == pytest.approx(0.05, abs=1e-3)


def test_train_writes_the_reference_layout(tmp_path):
    """Default run directory: outputs/<dataset>/<exp_name>/<density>/<override dirname>/."""
    proc = _run([sys.executable, "-m", "sparsetrain", *FAST, "masking.interval=10"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    runs = list((tmp_path / "outputs" / "digits" / "RigL_ERK" / "0.2").iterdir())
    assert [r.name for r in runs] == [
        "dataset.max_threads=1,masking.interval=10,model=lenet-300-100,optimizer.epochs=1"
    ]
    run_dir = runs[0]
    for name in (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "metrics.jsonl",
                 "summary.json", "ckpts/last.pt", "ckpts/epoch_1.pth"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    saved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert saved["masking"]["interval"] == 10 and saved["model"] == "lenet-300-100"
    assert (
        yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["output_subdir"]
        == ".hydra"
    )
    assert "model=lenet-300-100" in yaml.safe_load(
        (run_dir / ".hydra" / "overrides.yaml").read_text()
    )
    summary = read_summary(run_dir)
    assert set(SUMMARY_KEYS) <= set(summary)
    assert (
        summary["method"] == "RigL" and summary["init"] == "ERK" and summary["test_accuracy"] > 0.2
    )
    assert "test_acc" in proc.stdout and "RigL_ERK" in proc.stdout  # progress + summary table


def test_multi_seed_records_each_seed(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli_main.main([*FAST, "multi_seed=[0,1]", f"hydra.run.dir={run_dir}"]) == 0
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    seeds = [read_summary(run_dir / f"seed={s}")["seed"] for s in (0, 1)]
    assert seeds == [0, 1]
    assert not (run_dir / "summary.json").exists()


def test_task_returns_mean_val_accuracy_for_the_sweeper(tmp_path, monkeypatch):
    """The Hydra task function's return value is what the Optuna sweeper maximises."""
    returned = []
    original = cli_main.task
    monkeypatch.setattr(
        cli_main, "task", lambda cfg: returned.append(original(cfg)) or returned[-1]
    )
    assert cli_main.main([*FAST, "multi_seed=[0,1]", f"hydra.run.dir={tmp_path}"]) == 0
    vals = [read_summary(tmp_path / f"seed={s}")["val_accuracy"] for s in (0, 1)]
    assert returned == [pytest.approx(sum(vals) / 2)]


def test_multirun_sweep(tmp_path):
    code = cli_main.main(["-m", *FAST, "seed=0,1", f"hydra.sweep.dir={tmp_path}"])
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        "dataset.max_threads=1,model=lenet-300-100,optimizer.epochs=1,seed=0",
        "dataset.max_threads=1,model=lenet-300-100,optimizer.epochs=1,seed=1",
    ]
    for job in tmp_path.glob("*seed=*"):
        assert read_summary(job)["status"] == "completed"
        assert (job / ".hydra" / "overrides.yaml").is_file()


def test_subcommands_dispatch_lazily(monkeypatch, capsys):
    from sparsetrain.errors import ConfigError

    calls = []

    def fake_main(argv):
        calls.append(argv)
        if argv == ["--bad"]:
            raise ConfigError("unknown option '--bad'; valid choices: --x")
        return 0

    fake = types.ModuleType("fake_report_cli")
    fake.main = fake_main
    monkeypatch.setitem(sys.modules, "fake_report_cli", fake)
    monkeypatch.setitem(cli_main.SUBCOMMANDS, "report", "fake_report_cli")
    assert cli_main.main(["report", "outputs", "--format", "md"]) == 0
    assert calls == [["outputs", "--format", "md"]]
    assert cli_main.main(["report", "--bad"]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown option '--bad'; valid choices: --x"


def test_every_subcommand_module_is_wired():
    assert set(cli_main.SUBCOMMANDS) == {"flops", "report", "export"}


def test_wandb_offline_mode_writes_a_local_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    assert cli_main.main([*FAST, "wandb.use=true", f"hydra.run.dir={run_dir}"]) == 0
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert list(offline[0].glob("run-*.wandb"))  # the run's history (metrics) file
    assert any(r["type"] == "eval" for r in read_metrics(run_dir / "metrics.jsonl"))
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
