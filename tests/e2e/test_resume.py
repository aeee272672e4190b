"""Exact resume after a crash: kill -9 (or SIGTERM) a real `digits` run (a subprocess)
mid-epoch, rerun the same command, and the final weights, masks, optimizer state and FLOPs
counts are bit-identical to an uninterrupted run. The uninterrupted run and the rerun go
through the same CLI entry point in-process, to save interpreter start-ups."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ARGS = [
    "dataset=digits",
    "model=lenet-300-100",
    "optimizer.epochs=12",
    "masking.interval=7",  # mask updates on steps that are not checkpoint steps
    "ckpt_every_steps=5",  # 21 steps per epoch: checkpoints land mid-epoch
    "progress=false",
    "dataset.max_threads=1",
]


def _cmd(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "sparsetrain", *ARGS, f"hydra.run.dir={run_dir}"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _final(run_dir: Path) -> dict:
    return torch.load(run_dir / "ckpts" / "last.pt", weights_only=True)


def _assert_identical(a: dict, b: dict) -> None:
    assert a["position"] == b["position"] and a["finished"] and b["finished"]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for name in a["sparsity"]["masks"]:
        assert torch.equal(a["sparsity"]["masks"][name], b["sparsity"]["masks"][name]), name
    assert a["flops"] == b["flops"]
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    for idx in opt_a:
        assert torch.equal(opt_a[idx]["momentum_buffer"], opt_b[idx]["momentum_buffer"])


def _same_command_in_process(run_dir: Path, capsys) -> str:
    """The same command line through the CLI's `main()` in this process (saves a start-up)."""
    from sparsetrain.cli.main import main

    code = main([*ARGS, f"hydra.run.dir={run_dir}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.fixture
def reference_run(tmp_path, capsys) -> dict:
    _same_command_in_process(tmp_path / "reference", capsys)
    return _final(tmp_path / "reference")


def _start_and_stop(run_dir: Path, sig: int) -> subprocess.Popen:
    """Start a run; once its first step checkpoint exists, send `sig`."""
    proc = subprocess.Popen(
        _cmd(run_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    last = run_dir / "ckpts" / "last.pt"
    deadline = time.monotonic() + 240
    while not last.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    os.kill(proc.pid, sig)
    proc.wait(timeout=120)
    return proc


def test_kill_9_mid_epoch_then_rerun_is_bit_identical(tmp_path, reference_run, capsys):
    run_dir = tmp_path / "run"
    proc = _start_and_stop(run_dir, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    cut = _final(run_dir)
    assert not cut["finished"], "the run finished before the kill: nothing was tested"
    assert cut["position"]["batch"] != 0  # a mid-epoch checkpoint
    assert "resuming at step" in _same_command_in_process(run_dir, capsys)
    _assert_identical(reference_run, _final(run_dir))


def test_sigterm_checkpoints_exits_143_and_resumes_identically(tmp_path, reference_run, capsys):
    run_dir = tmp_path / "run"
    proc = _start_and_stop(run_dir, signal.SIGTERM)
    stderr = proc.stderr.read()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: interrupted by SIGTERM at step"), stderr
    assert "rerun the same command to resume" in lines[0]
    assert not _final(run_dir)["finished"]
    _same_command_in_process(run_dir, capsys)
    _assert_identical(reference_run, _final(run_dir))
