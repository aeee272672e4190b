"""Checkpoints: contents, safe loading, config hashing, RNG round trip, keep-last-K, and a
resume that continues exactly where an in-process run stopped."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import compose_config as compose
from torch import nn

from sparsetrain.errors import CheckpointError
from sparsetrain.train import checkpoint as ckpt_io

FAST = (
    "dataset=digits",
    "model=lenet-300-100",
    "masking.interval=10",
    "progress=false",
    "dataset.max_threads=1",
)


def test_config_hash_ignores_only_result_neutral_keys():
    base = ckpt_io.config_items(compose())
    assert "optimizer.lr" in base and "masking.density" in base
    for key in ("resume", "device", "progress", "dataset.root", "log_interval", "ckpt_every_steps"):
        assert key not in base
    assert not any(k.startswith(("wandb.", "hydra.")) for k in base)
    same = ckpt_io.config_items(
        compose("device=cpu", "progress=false", "resume=false", "wandb.use=true")
    )
    assert ckpt_io.config_hash(same) == ckpt_io.config_hash(base)
    other = ckpt_io.config_items(compose("optimizer.lr=0.3"))
    assert ckpt_io.config_hash(other) != ckpt_io.config_hash(base)
    assert ckpt_io.describe_differences(base, other) == "optimizer.lr: 0.05 -> 0.3"


def test_rng_state_round_trip_is_weights_only_safe(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = ckpt_io.rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt_io.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_manager_keeps_last_k_epoch_files_and_last(tmp_path):
    mgr = ckpt_io.CheckpointManager(tmp_path / "ckpts", keep_last=2)
    for epoch in (1, 2, 3):
        mgr.save({"model": {"w": torch.full((2,), float(epoch))}}, epoch)
    mgr.save({"model": {"w": torch.zeros(2)}})  # a step checkpoint: last.pt only
    names = sorted(p.name for p in (tmp_path / "ckpts").iterdir())
    assert names == ["epoch_2.pth", "epoch_3.pth", "last.pt"]  # no temp files left behind
    assert ckpt_io.latest(tmp_path / "ckpts").name == "last.pt"
    assert ckpt_io.load(tmp_path / "ckpts" / "epoch_3.pth")["model"]["w"][0] == 3.0


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated"])
def test_corrupt_checkpoint_names_the_file(tmp_path, content):
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        ckpt_io.load(path)


def test_truncated_real_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"model": {"w": torch.randn(1000)}}, path)
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        ckpt_io.load(path)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "obj": nn.Linear(2, 2)}, path)  # a module: needs unpickling code
    with pytest.raises(CheckpointError, match=r"evil\.pt"):
        ckpt_io.load(path)


def test_model_mismatch_names_what_differs():
    a = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    b = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2), nn.Linear(2, 2))
    with pytest.raises(
        CheckpointError,
        match=r"unexpected 2\.weight.*shape of 0\.weight \(8, 4\) vs \(6, 4\)|missing 2\.weight",
    ):
        ckpt_io.check_model(a.state_dict(), b, "x.pt")


def test_config_mismatch_names_the_keys(tmp_path):
    items = ckpt_io.config_items(compose())
    ckpt = {"config_hash": ckpt_io.config_hash(items), "config": items}
    changed = ckpt_io.config_items(compose("masking.density=0.1"))
    with pytest.raises(CheckpointError, match=r"masking\.density: 0\.2 -> 0\.1"):
        ckpt_io.check_config(ckpt, tmp_path / "last.pt", changed)


def test_run_checkpoint_contents(tmp_path):
    from sparsetrain.train import runner

    runner.run(compose(*FAST, "optimizer.epochs=1"), tmp_path)
    ckpt = torch.load(tmp_path / "ckpts" / "last.pt", weights_only=True)
    for key in ("model", "init_model", "optimizer", "scheduler", "sparsity", "flops", "rng",
                "position", "config_hash", "version", "config", "finished"):  # fmt: skip
        assert key in ckpt, key
    assert ckpt["finished"] and ckpt["position"] == {"epoch": 1, "batch": 0, "step": 21}
    assert set(ckpt["init_model"]) == set(ckpt["model"])
    assert not torch.equal(ckpt["init_model"]["fc1.weight"], ckpt["model"]["fc1.weight"])
    assert ckpt["sparsity"]["masks"]["fc1.weight"].dtype == torch.bool
    assert (tmp_path / "ckpts" / "epoch_1.pth").is_file()  # the reference's name, too


def test_resume_from_a_mid_run_checkpoint_matches_an_uninterrupted_run(tmp_path):
    """In-process: stop after epoch 1 of 2 (a checkpoint every 4 steps), resume, compare."""
    from sparsetrain.train import runner

    full = compose(*FAST, "optimizer.epochs=2")
    runner.run(full, tmp_path / "full")
    # the same run, but stopped early: train 1 epoch of the 2-epoch schedule by faking a
    # preemption right after step 25 (mid-epoch 2) through the loop's own signal path
    import os
    import signal

    from sparsetrain.data import loader as loader_mod

    original = loader_mod.Loader._iterate

    def preempting(self, epoch, start_batch):
        for b, batch in enumerate(original(self, epoch, start_batch), start=start_batch):
            if self.shuffle and epoch == 1 and b == 4:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    from sparsetrain.train.loop import TrainingInterrupted

    loader_mod.Loader._iterate = preempting
    try:
        with pytest.raises(TrainingInterrupted):
            runner.run(full, tmp_path / "cut")
    finally:
        loader_mod.Loader._iterate = original
    cut = torch.load(tmp_path / "cut" / "ckpts" / "last.pt", weights_only=True)
    assert cut["position"] == {"epoch": 1, "batch": 5, "step": 26}
    runner.run(full, tmp_path / "cut")  # resume
    a = torch.load(tmp_path / "full" / "ckpts" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "ckpts" / "last.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["sparsity"]["masks"]:
        assert torch.equal(a["sparsity"]["masks"][k], b["sparsity"]["masks"][k]), k
    assert a["flops"] == b["flops"]


def test_resume_with_another_config_is_refused(tmp_path):
    from sparsetrain.train import runner

    runner.run(compose(*FAST, "optimizer.epochs=1"), tmp_path)
    before = (tmp_path / "ckpts" / "last.pt").read_bytes()
    with pytest.raises(CheckpointError, match=r"optimizer\.lr: 0\.05 -> 0\.01"):
        runner.run(compose(*FAST, "optimizer.epochs=1", "optimizer.lr=0.01"), tmp_path)
    assert (tmp_path / "ckpts" / "last.pt").read_bytes() == before


def test_reference_style_checkpoint_dir_is_found(tmp_path: Path):
    (tmp_path / "ckpts").mkdir()
    torch.save({"state_dict": {}}, tmp_path / "ckpts" / "epoch_250.pth")
    assert ckpt_io.latest(tmp_path / "ckpts").name == "epoch_250.pth"
