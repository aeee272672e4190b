"""Every bad input of issue 11: one line on stderr (`error: ...`) naming the fix, exit code 2
(1 for failures while running), no traceback, and nothing overwritten.

Most cases call the CLI's `main(argv)` in-process (fast); two run it as a real process to check
the whole stderr and `HYDRA_FULL_ERROR=1`."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sparsetrain.cli.main import describe, main
from sparsetrain.errors import ConfigError, UnsupportedOptimizer

FAST = (
    "dataset=digits",
    "model=lenet-300-100",
    "optimizer.epochs=1",
    "progress=false",
    "dataset.max_threads=1",
)


def cli(capsys, run_dir: Path, *args: str) -> tuple[int, str]:
    code = main([*args, f"hydra.run.dir={run_dir}"])
    err = capsys.readouterr().err
    return code, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- unknown names
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("masking=Foo", "unknown masking 'Foo'; valid choices: Dense, Lottery, Pruning, RigL"),
        ("masking.name=Foo", "unknown masking method 'Foo'; valid choices:"),
        ("model=resnet", "unknown model 'resnet'; valid choices: lenet-300-100"),
        ("dataset=Foo", "unknown dataset 'Foo'; valid choices: CIFAR10, CIFAR100, FashionMNIST"),
        ("dataset.name=Foo", "unknown dataset 'Foo'; valid choices:"),
        ("optimizer=RMSprop", "unknown optimizer 'RMSprop'; valid choices: Adam, SGD"),
        ("optimizer.name=RMSprop", "unknown optimizer 'RMSprop'; valid choices: Adam, SGD"),
        ("masking.sparse_init=bogus", "unknown sparse_init 'bogus'; valid choices: ER, ERK"),
        ("device=gpu", "unknown device 'gpu'; valid choices: auto, cpu, cuda"),
    ],
)
def test_unknown_names(capsys, tmp_path, override, expected):
    code, err = cli(capsys, tmp_path / "run", override)
    assert code == 2
    assert expected in one_error_line(err)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["masking.desnity=0.1"],
            "unknown config key 'masking.desnity' (did you mean masking.density?)",
        ),
        (["foo=1"], "unknown config key 'foo'; valid keys: dataset, optimizer, masking"),
        (["masking.density=abc"], "invalid value for masking.density: Value 'abc'"),
        (["x=["], "cannot parse override 'x=['"),
        (["exp_name=${nope}"], "config does not resolve: Interpolation key 'nope' not found"),
    ],
)
def test_hydra_composition_errors_are_one_line(capsys, tmp_path, args, expected):
    code, err = cli(capsys, tmp_path / "run", *args)
    assert code == 2
    assert expected in one_error_line(err)


# --------------------------------------------------------------------------- out-of-range values
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["masking.density=0"], "masking.density must be in (0, 1], got 0"),
        (["masking.density=-0.5"], "masking.density must be in (0, 1], got -0.5"),
        (["masking.density=1.5"], "masking.density must be in (0, 1], got 1.5"),
        (
            ["masking=Pruning", "masking.density=0.5", "masking.final_density=0.8"],
            "masking.final_density (0.8) is above the starting density masking.density (0.5)",
        ),
        (["masking.interval=0"], "masking.interval must be > 0"),
        (["masking.interval=-3"], "masking.interval must be > 0"),
        (["masking.end_when=100000"], "masking.end_when=100000.0 is beyond training (21 steps"),
        (
            ["masking=SET", "masking.end_when=5"],
            "masking.end_when=5.0 is beyond training (1 epochs",
        ),
        (
            ["dataset.batch_size=100000"],
            "dataset.batch_size=100000 is larger than the training set (1294",
        ),
        (["optimizer.lr=0"], "optimizer.lr must be > 0"),
        (["optimizer.gradient_accumulation=0"], "optimizer.gradient_accumulation must be >= 1"),
        (
            ["on_nonfinite_loss=ignore"],
            "unknown on_nonfinite_loss 'ignore'; valid choices: skip, stop",
        ),
    ],
)
def test_out_of_range_values(capsys, tmp_path, args, expected):
    code, err = cli(capsys, tmp_path / "run", *FAST, *args)
    assert code == 2
    assert expected in one_error_line(err)
    assert not (tmp_path / "run" / ".hydra").exists()  # rejected before anything was written


# --------------------------------------------------------------------------- files
def test_missing_data_files_say_where_and_how(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSETRAIN_OFFLINE", "1")
    monkeypatch.setenv("SPARSETRAIN_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code, err = cli(
        capsys,
        tmp_path / "run",
        "dataset=MNIST",
        f"dataset.root={tmp_path / 'empty'}",
        "progress=false",
    )
    line = one_error_line(err)
    assert code == 2
    assert "not found in" in line and str(tmp_path / "empty") in line and "download" in line


def test_corrupt_idx_file_names_the_file(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSETRAIN_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "mnist"
    root.mkdir()
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (root / f"{stem}.gz").write_bytes(
            gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 10)[:-6]
        )  # truncated
    code, err = cli(
        capsys, tmp_path / "run", "dataset=MNIST", f"dataset.root={root}", "progress=false"
    )
    line = one_error_line(err)
    assert code == 2
    assert str(root) in line and "-ubyte" in line


def test_missing_lottery_source_names_the_command(capsys, tmp_path):
    code, err = cli(
        capsys,
        tmp_path / "run",
        *FAST,
        "masking=Lottery",
        f"masking.lottery_mask_path={tmp_path / 'nope'}",
    )
    line = one_error_line(err)
    assert code == 2
    assert (
        "create it first with: sparsetrain masking=Pruning dataset=digits model=lenet-300-100"
        in line
    )


def test_checkpoint_of_another_config_or_model(capsys, tmp_path):
    run_dir = tmp_path / "run"
    assert cli(capsys, run_dir, *FAST)[0] == 0
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    code, err = cli(capsys, run_dir, *FAST, "model=mlp")
    line = one_error_line(err)
    assert code == 2
    assert "different config (model: lenet-300-100 -> mlp)" in line and "last.pt" in line
    assert {
        p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != "main.log"
    } == {
        p: b for p, b in before.items() if p.name != "main.log"
    }  # overwrites nothing (Hydra's own log file only grows)


def test_corrupt_checkpoint_names_the_file_and_is_kept(capsys, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "ckpts").mkdir(parents=True)
    (run_dir / "ckpts" / "last.pt").write_bytes(b"\x00garbage")
    code, err = cli(capsys, run_dir, *FAST)
    line = one_error_line(err)
    assert code == 2
    assert f"checkpoint {run_dir / 'ckpts' / 'last.pt'} is corrupt" in line
    assert (run_dir / "ckpts" / "last.pt").read_bytes() == b"\x00garbage"
    assert not (run_dir / ".hydra").exists()


def test_output_directory_not_writable(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, err = cli(capsys, blocker / "run", *FAST)
    line = one_error_line(err)
    assert code == 2
    assert "cannot write the run directory" in line and "hydra.run.dir" in line


# --------------------------------------------------------------------------- engine errors (API)
def test_unsupported_optimizer_passed_to_sparsify():
    import sparsetrain

    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(UnsupportedOptimizer) as info:
        sparsetrain.sparsify(
            model, torch.optim.RMSprop(model.parameters()), density=0.5, total_steps=10
        )
    code, message = describe(info.value)
    assert code == 2 and "\n" not in message and "RMSprop" in message


def test_model_with_no_maskable_layers():
    import sparsetrain

    model = nn.Sequential(nn.BatchNorm1d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="no maskable layers") as info:
        sparsetrain.sparsify(model, opt, density=0.5, total_steps=10)
    assert describe(info.value)[0] == 2


def test_tiny_density_keeps_at_least_one_weight_per_layer():
    import sparsetrain

    model = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctl = sparsetrain.sparsify(
        model, opt, method="Static", density=1e-6, init="random", total_steps=10
    )
    assert all(int(m.sum()) >= 1 for m in ctl.masks.values())


# --------------------------------------------------------------------------- runtime failure, W&B
def test_diverged_training_exits_1_naming_the_step(capsys, tmp_path):
    code, err = cli(capsys, tmp_path / "run", *FAST, "optimizer.lr=1e30", "log_interval=5")
    line = one_error_line(err)
    assert code == 1
    assert "loss became non-finite at step" in line
    import json

    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"


def test_wandb_without_key_or_network_goes_offline(capsys, tmp_path, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: no network
    code, err = cli(
        capsys, tmp_path / "run", *FAST, "wandb.use=true", f"wandb.api_key={tmp_path / 'no.key'}"
    )
    assert code == 0, err
    assert "wandb: no API key" in err and "offline" in err
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


# --------------------------------------------------------------------------- as a real process
def _process(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, **env}
    environ.pop("HYDRA_FULL_ERROR", None) if "HYDRA_FULL_ERROR" not in env else None
    return subprocess.run(
        [sys.executable, "-m", "sparsetrain", *args, f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )


def test_process_prints_one_line_and_exits_2(tmp_path):
    proc = _process(["masking=Foo"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown masking 'Foo'; valid choices: Dense, Lottery, Pruning, RigL, RigL_reinit, "
        "SET, SNFS, Small_Dense, Static"
    ]


def test_hydra_full_error_lets_the_exception_through(tmp_path, monkeypatch):
    """With HYDRA_FULL_ERROR=1 the exception propagates, so Python prints the full traceback."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError, match=r"masking\.density must be in"):
        main([*FAST, "masking.density=2", f"hydra.run.dir={tmp_path / 'run'}"])
    assert os.environ["HYDRA_FULL_ERROR"] == "1"  # restored as the user set it
