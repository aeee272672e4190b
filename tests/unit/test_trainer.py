"""The trainer: optimizer/LR builders, the loop's contract (steps, accumulation, no per-step
host sync, non-finite loss, signals) and end-to-end runs on scikit-learn's `digits`."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest
import torch
from tests.conftest import compose_config as compose
from torch import nn

from sparsetrain.errors import ConfigError, TrainingDiverged
from sparsetrain.train import checkpoint as ckpt_io
from sparsetrain.train.loop import TrainingInterrupted, TrainSetup, TrainState, train
from sparsetrain.train.optim import LRSchedule, build_optimizer, build_schedule
from sparsetrain.train.results import RunWriter, read_metrics, read_summary

FAST = (
    "dataset=digits",
    "model=lenet-300-100",
    "optimizer.epochs=2",
    "masking.interval=10",
    "progress=false",
    "dataset.max_threads=1",
)


def run(tmp_path: Path, *overrides: str, name: str = "run") -> dict:
    from sparsetrain.train import runner

    return runner.run(compose(*FAST, *overrides), tmp_path / name)


# --------------------------------------------------------------------------- optimizer / LR
def test_build_optimizer_sgd_nesterov_and_adam():
    params = [nn.Parameter(torch.zeros(3))]
    cfg = compose("optimizer.lr=0.2", "optimizer.momentum=0.8").optimizer
    sgd = build_optimizer(params, cfg)
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.2, 0.8, True)
    assert group["weight_decay"] == 5e-4
    adam = build_optimizer(params, compose("optimizer=Adam").optimizer)
    assert isinstance(adam, torch.optim.Adam)


def test_unknown_optimizer_names_the_choices():
    cfg = compose("optimizer.name=RMSprop").optimizer
    with pytest.raises(ConfigError, match="valid choices: Adam, SGD"):
        build_optimizer([nn.Parameter(torch.zeros(1))], cfg)


def test_step_decay_warmup_and_cosine():
    s = LRSchedule(base_lr=1.0, total_steps=100, decay_frequency=10, decay_factor=0.5)
    assert [s.lr_at(t) for t in (0, 9, 10, 19, 20)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    w = LRSchedule(base_lr=1.0, total_steps=100, decay_frequency=1000, warmup_steps=4)
    assert [w.lr_at(t) for t in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    c = LRSchedule(base_lr=1.0, total_steps=100, schedule="cosine")
    assert (
        c.lr_at(0) == 1.0
        and c.lr_at(50) == pytest.approx(0.5)
        and c.lr_at(100) == pytest.approx(0.0)
    )
    with pytest.raises(ConfigError, match="lr_schedule"):
        LRSchedule(base_lr=1.0, total_steps=10, schedule="linear")


def test_training_multiplier_scales_decay_not_warmup():
    cfg = compose("optimizer.decay_frequency=100", "optimizer.warmup_steps=7").optimizer
    s = build_schedule(cfg, total_steps=1000, multiplier=2)
    assert (s.decay_frequency, s.warmup_steps) == (200, 7)


# --------------------------------------------------------------------------- the loop, directly
class _Data:
    """A stand-in Loader: fixed batches; optional hooks at given (epoch, batch)."""

    def __init__(self, n_batches=6, nan_at=None, on_batch=None):
        g = torch.Generator().manual_seed(0)
        self.batches = [
            (torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g))
            for _ in range(n_batches)
        ]
        self.nan_at, self.on_batch = nan_at, on_batch

    def __len__(self):
        return len(self.batches)

    def epoch(self, epoch, start_batch=0):
        for b in range(start_batch, len(self.batches)):
            x, y = self.batches[b]
            if self.on_batch is not None:
                self.on_batch(epoch, b)
            if self.nan_at == (epoch, b):
                x = torch.full_like(x, float("nan"))
            yield x, y


def _setup(tmp_path, data, saves, **kw):
    import sparsetrain

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctl = sparsetrain.sparsify(
        model, opt, method=kw.pop("method", "Static"), density=0.5, init="random"
    )
    defaults = dict(
        model=model,
        optimizer=opt,
        controller=ctl,
        schedule=LRSchedule(base_lr=0.1, total_steps=100),
        train_loader=data,
        val_loader=None,
        test_loader=_Data(2),
        epochs=2,
        save_checkpoint=lambda state, epoch: saves.append((state.step, epoch, state.finished)),
        writer=RunWriter(tmp_path),
        log_interval=100,
        progress=False,
    )
    defaults.update(kw)
    return TrainSetup(**defaults)


def test_steps_are_optimizer_steps_under_gradient_accumulation(tmp_path):
    saves = []
    setup = _setup(tmp_path, _Data(7), saves, accumulation=3)
    state = train(setup, TrainState())
    assert state.step == 2 * math.ceil(7 / 3)  # 3 + 3 + 1 micro-batches per epoch
    assert state.finished and state.epoch == 2
    assert saves == [(6, 2, True)]  # ckpt_interval=0: only at the end, as epoch_<N>


def test_no_host_sync_per_step(tmp_path, monkeypatch):
    """Loss/accuracy stay on the device: reading them (item/tolist/bool) happens at log points,
    not once per step."""
    calls = {"n": 0}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            calls["n"] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    setup = _setup(tmp_path, _Data(40), [], epochs=1, method="Dense")
    train(setup, TrainState())
    assert calls["n"] < 10, f"{calls['n']} host reads for 40 steps"


def test_nonfinite_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
    saves = []
    setup = _setup(tmp_path, _Data(6, nan_at=(1, 2)), saves, ckpt_every_steps=2)
    with pytest.raises(
        TrainingDiverged, match=r"non-finite at step 9 \(epoch 2\).*kept the checkpoint of step 8"
    ):
        train(setup, TrainState())
    # checkpoints before the bad step only (the one due at step 10 is refused)
    assert [s for s, _, _ in saves] == [2, 4, 8]


def test_nonfinite_loss_skip_drops_the_batch(tmp_path):
    setup = _setup(tmp_path, _Data(6, nan_at=(0, 3)), [], on_nonfinite_loss="skip")
    state = train(setup, TrainState())
    assert state.skipped_batches == 1 and state.step == 11
    assert all(torch.isfinite(p).all() for p in setup.model.parameters())


def test_sigterm_checkpoints_then_raises(tmp_path):
    saves = []

    def on_batch(epoch, b):
        if (epoch, b) == (0, 2):
            os.kill(os.getpid(), signal.SIGTERM)

    setup = _setup(tmp_path, _Data(6, on_batch=on_batch), saves)
    with pytest.raises(TrainingInterrupted, match="SIGTERM at step 3") as info:
        train(setup, TrainState())
    assert info.value.exit_code == 128 + signal.SIGTERM
    assert saves == [(3, None, False)]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored


def test_mid_epoch_restart_continues_the_batch_order(tmp_path):
    seen = []
    setup = _setup(tmp_path, _Data(6, on_batch=lambda e, b: seen.append((e, b))), [], epochs=1)
    train(setup, TrainState(batch=4, step=4))
    assert seen == [(0, 4), (0, 5)]


# --------------------------------------------------------------------------- end to end (digits)
def test_trainer_learns_digits_and_writes_results(tmp_path):
    s = run(tmp_path, "optimizer.epochs=3", "ckpt_interval=1", "keep_last_ckpts=2")
    assert s["test_accuracy"] > 0.6 and s["val_accuracy"] > 0.6  # chance is 0.1
    assert s["status"] == "completed" and s["steps"] == 3 * math.ceil(1294 / 64)
    assert s["actual_density"] == pytest.approx(0.2, abs=1e-3)
    assert 0.2 <= s["train_flops"] < 0.3 and s["test_flops"] == pytest.approx(0.2, abs=0.01)
    for key in (
        "exp_name",
        "layer_densities",
        "lr",
        "prune_rate",
        "interval",
        "version",
        "wall_seconds",
    ):
        assert key in s
    run_dir = tmp_path / "run"
    assert read_summary(run_dir)["test_accuracy"] == s["test_accuracy"]
    kinds = {r["type"] for r in read_metrics(run_dir / "metrics.jsonl")}
    assert kinds == {"train", "eval", "mask_update"}
    ckpts = sorted(p.name for p in (run_dir / "ckpts").iterdir())
    assert ckpts == ["epoch_2.pth", "epoch_3.pth", "last.pt"]  # keep_last_ckpts=2


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    def weights(name, seed):
        run(tmp_path, "optimizer.epochs=1", f"seed={seed}", name=name)
        return ckpt_io.load(tmp_path / name / "ckpts" / "last.pt")["model"]

    a, b, c = weights("a", 0), weights("b", 0), weights("c", 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_training_multiplier_label_smoothing_and_accumulation(tmp_path):
    s = run(
        tmp_path,
        "optimizer.epochs=1",
        "optimizer.training_multiplier=2",
        "optimizer.label_smoothing=0.1",
        "optimizer.gradient_accumulation=2",
        "optimizer.lr_schedule=cosine",
        "optimizer.warmup_steps=5",
    )
    assert s["epochs"] == 2 and s["training_multiplier"] == 2
    assert s["steps"] == 2 * math.ceil(math.ceil(1294 / 64) / 2)


def test_dense_and_small_dense_use_the_same_path(tmp_path):
    dense = run(tmp_path, "masking=Dense", "optimizer.epochs=1", name="dense")
    small = run(
        tmp_path, "masking=Small_Dense", "masking.density=0.25", "optimizer.epochs=1", name="small"
    )
    assert dense["train_flops"] == pytest.approx(1.0) and dense["actual_density"] == 1.0
    assert small["width"] < 1.0 and 0.1 < small["test_flops"] < 0.4
    assert dense["test_accuracy"] > 0.3 and small["test_accuracy"] > 0.3


def test_multi_seed_runs_each_seed_in_its_own_directory(tmp_path):
    from sparsetrain.train import runner

    cfg = compose(*FAST, "optimizer.epochs=1", "multi_seed=[0,1]")
    mean, summaries = runner.run_seeds(cfg, tmp_path)
    assert [s["seed"] for s in summaries] == [0, 1]
    assert mean == pytest.approx(sum(s["val_accuracy"] for s in summaries) / 2)
    for seed in (0, 1):
        assert read_summary(tmp_path / f"seed={seed}")["seed"] == seed


def test_finished_run_is_evaluated_not_retrained(tmp_path):
    first = run(tmp_path, "optimizer.epochs=1")
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    again = run(tmp_path, "optimizer.epochs=1")
    assert again["test_accuracy"] == first["test_accuracy"] and again["steps"] == first["steps"]
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics


def test_resume_false_starts_over_and_drops_stale_files(tmp_path):
    run(tmp_path, "optimizer.epochs=3", "ckpt_interval=1")
    s = run(tmp_path, "optimizer.epochs=1", "resume=false")
    assert s["epochs"] == 1
    ckpts = sorted(p.name for p in (tmp_path / "run" / "ckpts").iterdir())
    assert ckpts == ["epoch_1.pth", "last.pt"]  # epoch_2/epoch_3 of the old run are gone
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert max(steps) == s["steps"]


@pytest.mark.slow
def test_soak_5000_mask_updates_exact_density_flat_memory(tmp_path):
    """Issue 11 soak: 5,000 RigL updates (one per step) on a small MLP through the loop —
    the density is exact after every update and memory does not grow."""
    import resource
    import tracemalloc

    import sparsetrain

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctl = sparsetrain.sparsify(
        model, opt, "RigL", density=0.3, init="ERK", total_steps=5001, interval=1, end_when=5001
    )
    budgets = {n: int(m.sum()) for n, m in ctl.masks.items()}
    marks = {}

    def on_batch(epoch, b):
        if b in (1000, 4999):
            marks[b] = (
                tracemalloc.take_snapshot(),
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            )

    data = _Data(1)
    data.batches = data.batches * 5001
    data.on_batch = on_batch
    setup = TrainSetup(
        model=model, optimizer=opt, controller=ctl, schedule=LRSchedule(base_lr=0.05, total_steps=5001),
        train_loader=data, val_loader=None, test_loader=_Data(1), epochs=1,
        save_checkpoint=lambda state, epoch: None, writer=RunWriter(tmp_path), log_interval=500, progress=False,
    )  # fmt: skip
    tracemalloc.start()
    try:
        train(setup, TrainState())
        (snap1, rss1), (snap2, rss2) = marks[1000], marks[4999]
        growth = sum(s.size_diff for s in snap2.compare_to(snap1, "filename"))
    finally:
        tracemalloc.stop()
    updates = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["type"] == "mask_update"]
    assert len(updates) == 5000
    assert {r["density"] for r in updates} == {updates[0]["density"]}
    assert {n: int(m.sum()) for n, m in ctl.masks.items()} == budgets
    assert growth < 256 * 1024, f"python heap grew by {growth} bytes over 4,000 updates"
    assert rss2 - rss1 < 32 * 1024, f"RSS grew by {rss2 - rss1} KiB"
