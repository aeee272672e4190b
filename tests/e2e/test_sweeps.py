"""Sweeps end to end on the tiny `digits` data set: an Optuna study whose first two trials run
as a parallel joblib multirun and that a re-run continues, a multirun started through `make`, and
a `submitit_local` sweep (the SLURM code path)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _runner_missing() -> bool:
    try:
        return importlib.util.find_spec("sparsetrain.train.runner") is None
    except ImportError:
        return True


pytestmark = pytest.mark.skipif(
    _runner_missing(), reason="sparsetrain.train.runner (the trainer) is not importable yet"
)

# one epoch of LeNet-5 on digits: a few seconds per job
TINY = [
    "dataset=digits",
    "optimizer.epochs=1",
    "masking.end_when=0.75",
    "progress=false",
    "device=cpu",
    "dataset.max_threads=1",
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HYDRA_FULL_ERROR="1", OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONUNBUFFERED="1"
    )
    return env


def sparsetrain(cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "sparsetrain", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def summaries(root: Path) -> dict[str, dict]:
    return {
        str(p.parent.relative_to(root)): json.loads(p.read_text())
        for p in sorted(root.rglob("summary.json"))
    }


def test_optuna_study_continues_on_rerun(tmp_path):
    """Two trials in parallel (joblib launcher, 2 processes), then one more from a re-run."""
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    storage = f"sqlite:///{tmp_path / 'db' / 'study.db'}"  # db/ does not exist yet: the
    # SweeperStorageDir callback creates it before Optuna opens the storage
    args = [
        "-m",
        "hydra/sweeper=optuna",
        "+specific=fmnist_lenet5_optuna",  # maximize, TPE seed 123, the alpha / Delta T space
        *TINY,
        "multi_seed=[0]",
        "masking.interval=range(5,20,5)",  # Delta T in steps of this tiny run
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=digits-test",
        "hydra.sweeper.n_trials=2",
    ]
    parallel = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2"]
    proc = sparsetrain(tmp_path, *args, *parallel)
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    study = optuna.load_study(study_name="digits-test", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    first = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(first) == 2
    assert all(0.0 <= t.value <= 1.0 for t in first)  # mean validation accuracy
    assert set(first[0].params) == {"masking.prune_rate", "masking.interval"}
    sweep_dir = tmp_path / "outputs" / "digits" / "RigL_ERK" / "0.2"
    assert (sweep_dir / "optimization_results.yaml").is_file()
    # each trial is a run directory of the usual layout; multi_seed runs go to seed=<s>/
    runs = summaries(sweep_dir)
    assert len(runs) == 2 and all(k.endswith("/seed=0") for k in runs)

    # the same command again: the study is loaded from the storage and grows
    sparsetrain(tmp_path, *args[:-1], "hydra.sweeper.n_trials=1")
    study = optuna.load_study(study_name="digits-test", storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3
    assert [t.number for t in done] == [0, 1, 2]


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
def test_make_target_runs_a_multirun(tmp_path):
    """`make fmnist.ERK.RigL DENSITY=0.3,0.5`: two jobs, one run directory per density."""
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    shutil.copytree(REPO / "mk", tmp_path / "mk")
    cmd = [
        "make",
        "fmnist.ERK.RigL",
        "DENSITY=0.3,0.5",
        "SEED=0",
        "DEVICE=cpu",
        f"SPARSETRAIN={sys.executable} -m sparsetrain",
        f"ARGS={' '.join(t for t in TINY if not t.startswith('device='))}",
    ]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    root = tmp_path / "outputs" / "FashionMNIST"
    assert not root.exists()  # ARGS dataset=digits wins over the specific file's data set
    runs = summaries(tmp_path / "outputs" / "digits" / "RigL_ERK")
    name = "+specific=fmnist_lenet5_masking,dataset.max_threads=1,masking.end_when=0.75,optimizer.epochs=1,seed=0"
    assert set(runs) == {f"0.3/{name}", f"0.5/{name}"}
    assert {round(s["density"], 6) for s in runs.values()} == {0.3, 0.5}
    for run in runs:
        run_dir = tmp_path / "outputs" / "digits" / "RigL_ERK" / run
        assert (run_dir / ".hydra" / "config.yaml").is_file()
        assert (run_dir / "metrics.jsonl").is_file()
        assert (run_dir / "ckpts" / "last.pt").is_file()


@pytest.mark.slow
def test_submitit_local_sweep_of_two_jobs(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sparsetrain(
        tmp_path,
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "hydra.launcher.cpus_per_task=1",
        *TINY,
        "seed=0,1",
    )
    sweep_dir = tmp_path / "outputs" / "digits" / "RigL_ERK" / "0.2"
    runs = summaries(sweep_dir)
    name = "dataset.max_threads=1,masking.end_when=0.75,optimizer.epochs=1,seed="
    assert set(runs) == {f"{name}0", f"{name}1"}
    assert sorted(s["seed"] for s in runs.values()) == [0, 1]
    assert (sweep_dir / "multirun.yaml").is_file()
    assert any((sweep_dir / ".submitit").rglob("*_result.pkl"))
