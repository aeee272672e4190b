"""The examples run as written (they are what the docs tell new users to copy)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_example(name: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_custom_loop_rigl_learns_at_exact_density():
    out = run_example("custom_loop.py", "--epochs", "4")  # as a user runs it: a subprocess
    last = next(line for line in out.splitlines() if line.startswith("epoch 4:"))
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", last).group(1))
    assert accuracy > 0.6, out  # 10 classes: chance is 0.1
    assert "density 0.100" in last
    updates = int(re.search(r"mask updates (\d+)", last).group(1))
    assert updates >= 3, out


def test_custom_loop_epoch_end_method(capsys):
    spec = importlib.util.spec_from_file_location(
        "custom_loop", ROOT / "examples" / "custom_loop.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--method", "SET", "--density", "0.2", "--epochs", "3"])
    assert result["updates"] == 2  # epoch_end updates after epochs 1 and 2 (end_when 0.99)
    assert result["density"] == pytest.approx(0.2, abs=1e-3)
    assert "SET at density 0.200" in capsys.readouterr().out
