"""DistributedDataParallel on CPU (Gloo, 2 processes): masks identical on every rank by
construction, the same training as one process with the whole batch, gradient accumulation
equal to the larger batch, and a real `torchrun ... -m sparsetrain` run.

One `torch.multiprocessing.spawn` of 2 ranks trains every scenario (interpreter start-up is
most of the cost) through the trainer's own loop (`sparsetrain.train.loop.train`) with the
real `Loader`, `sparsify` and `sparsetrain.distributed.init/wrap`; each rank records, after
every mask update, the fingerprints of its masks and weights, the fingerprints of *all* ranks
(through an all_gather), the active-weight count, and copies of masks and weights. The single-
process reference runs here, in the test process.

Float ties: comparing 2 ranks x b/2 with 1 rank x b (and accumulation) the gradients differ
only in summation order; in float64 these differences (~1e-16) cannot flip a top-k selection
unless two scores are that close, so those scenarios train a float64 copy of the model and
assert masks *equal* and weights *allclose*. Ties that are exact (zero gradients of always-
zero input pixels, zero-initialised regrown weights) are broken by the lower index in both.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.distributed

WORLD = 2
# digits with a 0.12 validation split: 1265 training examples. Global batch b = 64: 20 steps
# per epoch, the last batch 49 examples -> uneven shards 24 / 25 on the 2 ranks; b/2 = 32 with
# accumulation 2: 40 micro-batches, the last step 32 + 17 -> unequal micro-batches. Both must
# still give the gradient of the same 49 examples (the loss weighting of the loop).
VALIDATION_SPLIT = 0.12
N_TRAIN = 1265
BATCH = 64
EPOCHS = 2
INTERVAL = 3  # Delta T: mask updates at steps 3, 6, ..., 27 (end_when 0.75 of 40 = 30)

# name -> (method, global batch, accumulation, dtype)
SCENARIOS = {
    "rigl": ("RigL", BATCH, 1, torch.float32),  # (1) identical on every rank, as trained
    "set": ("SET", BATCH, 1, torch.float32),  # random growth: the shared seeded generator
    "snfs": ("SNFS", BATCH, 1, torch.float32),  # momentum growth and redistribution
    "rigl64": ("RigL", BATCH, 1, torch.float64),  # (2) vs one process with batch b
    "rigl64_accum": ("RigL", BATCH // 2, 2, torch.float64),  # (3) accumulation 2 x b/2
}


class _Double(nn.Module):
    """The model in float64: the Loader yields float32 images."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner.double()

    def forward(self, x):
        return self.inner(x.double())


class _Recorder:
    """A RunWriter stand-in: on every `mask_update` line (right after the update) record this
    rank's state and every rank's fingerprints."""

    def __init__(self, model, ctl):
        self.model, self.ctl, self.updates = model, ctl, []

    def log(self, kind, **fields):
        if kind != "mask_update":
            return
        from sparsetrain import distributed
        from sparsetrain.masks import unwrap

        weights = {k: v.detach().clone() for k, v in unwrap(self.model).state_dict().items()}
        masks = {k: m.clone() for k, m in self.ctl.masks.items()}
        fp = (distributed.fingerprint(masks), distributed.fingerprint(weights))
        self.updates.append(
            {
                "step": fields["step"],
                "density": fields["density"],
                "active": sum(int(m.sum()) for m in masks.values()),
                "fingerprints": fp,
                "all_ranks": distributed.all_gather_object(fp),
                "masks": masks,
                "weights": weights,
            }
        )


def train_scenario(method: str, batch: int, accum: int, dtype: torch.dtype) -> dict:
    """Train LeNet-300-100 on digits through the trainer's loop; rank/world from the process
    group (if any). Returns the update records and the final state."""
    from sparsetrain import distributed, sparsify
    from sparsetrain.data import Loader, load_splits
    from sparsetrain.masks import unwrap
    from sparsetrain.models import build
    from sparsetrain.train.loop import TrainSetup, TrainState, train
    from sparsetrain.train.optim import LRSchedule

    rank, world = distributed.rank(), distributed.group_size()
    splits = load_splits("digits", validation_split=VALIDATION_SPLIT, split_seed=0)
    assert len(splits.train[1]) == N_TRAIN
    info = splits.info
    train_loader = Loader(*splits.train, batch, shuffle=True, augment=None, info=info, seed=0,
                          rank=rank, world_size=world)  # fmt: skip
    test_loader = Loader(*splits.test, 128, shuffle=False, info=info, seed=0)
    steps = math.ceil(len(train_loader) / accum) * EPOCHS
    torch.manual_seed(0)
    model = build("lenet-300-100", info)
    model = _Double(model) if dtype == torch.float64 else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctl = sparsify(model, optimizer, method=method, density=0.2, init="ERK", total_steps=steps,
                   steps_per_epoch=steps // EPOCHS, apply_when="step_end", interval=INTERVAL,
                   end_when=0.75, seed=0)  # fmt: skip
    start_active = sum(int(m.sum()) for m in ctl.masks.values())
    recorder = _Recorder(model, ctl)
    setup = TrainSetup(
        model=distributed.wrap(model, "cpu"),
        optimizer=optimizer,
        controller=ctl,
        schedule=LRSchedule(base_lr=0.05, total_steps=steps),
        train_loader=train_loader,
        val_loader=None,
        test_loader=test_loader,
        epochs=EPOCHS,
        save_checkpoint=lambda state, epoch: None,
        writer=recorder,
        accumulation=accum,
        log_interval=10,
        progress=False,
    )
    state = train(setup, TrainState())
    return {
        "steps": state.step,
        "start_active": start_active,
        "density": ctl.density(),
        "updates": recorder.updates,
        "last_eval": state.last_eval,
        "masks": {k: m.clone() for k, m in ctl.masks.items()},
        "weights": {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()},
    }


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(  # what torchrun sets
        {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    )  # fmt: skip
    torch.set_num_threads(1)
    from sparsetrain import distributed

    env = distributed.init("cpu")
    assert (env.rank, env.world_size, env.launcher) == (rank, world, "torchrun")
    try:
        results = {name: train_scenario(*spec) for name, spec in SCENARIOS.items()}
        try:  # the run-time check raises on every rank when one rank's masks differ
            distributed.check_identical("masks", {"m": torch.tensor([rank == 1])}, step=7)
            results["diverged"] = None
        except distributed.RanksDiverged as exc:
            results["diverged"] = str(exc)
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        distributed.teardown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Every scenario trained by 2 Gloo ranks: [rank 0's results, rank 1's]."""
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single() -> dict:
    """The float64 RigL run in one process with the whole batch b."""
    return train_scenario("RigL", BATCH, 1, torch.float64)


def _update_steps(result: dict) -> list[int]:
    return [u["step"] for u in result["updates"]]


# --------------------------------------------------------------------------- (1) every rank alike
@pytest.mark.parametrize("name", ["rigl", "set", "snfs"])
def test_masks_and_weights_bit_identical_on_every_rank_after_every_update(ranks, name):
    r0, r1 = ranks[0][name], ranks[1][name]
    steps = _update_steps(r0)
    assert steps == list(range(INTERVAL, 30, INTERVAL))  # 9 updates (end_when: step 30)
    assert _update_steps(r1) == steps
    for u0, u1 in zip(r0["updates"], r1["updates"], strict=True):
        # the all_gather inside the run: every rank saw the same fingerprints
        assert u0["all_ranks"] == u1["all_ranks"] == [u0["fingerprints"]] * WORLD, u0["step"]
        for key in u0["masks"]:  # and the tensors themselves (saved by each rank)
            assert torch.equal(u0["masks"][key], u1["masks"][key])
        for key in u0["weights"]:
            assert torch.equal(u0["weights"][key], u1["weights"][key])
        # exact budget: the same number of active weights at every update, density unchanged
        assert u0["active"] == r0["start_active"]
        assert u0["density"] == pytest.approx(0.2, abs=2e-3)
    assert r0["density"] == r1["density"]
    # sharded evaluation: the same numbers on every rank
    drop_wall = [{k: v for k, v in r["last_eval"].items() if k != "wall_seconds"} for r in (r0, r1)]
    assert drop_wall[0] == drop_wall[1]
    # the masks did change (the updates are real)
    first, last = r0["updates"][0]["masks"], r0["masks"]
    assert any(not torch.equal(first[k], last[k]) for k in first)


def test_a_rank_whose_masks_differ_stops_every_rank(ranks):
    for r in ranks:
        assert (
            r["diverged"] is not None and "masks differ between ranks after step 7" in r["diverged"]
        )


# --------------------------------------------------------------------------- (2) 2 x b/2 == 1 x b
def test_two_ranks_with_half_batches_train_like_one_process_with_the_batch(ranks, single):
    ddp = ranks[0]["rigl64"]
    assert ddp["steps"] == single["steps"] == math.ceil(N_TRAIN / BATCH) * EPOCHS
    assert _update_steps(ddp) == _update_steps(single)
    for ud, us in zip(ddp["updates"], single["updates"], strict=True):
        for key in us["masks"]:
            assert torch.equal(ud["masks"][key], us["masks"][key]), (ud["step"], key)
        for key in us["weights"]:
            torch.testing.assert_close(
                ud["weights"][key], us["weights"][key], rtol=1e-9, atol=1e-12
            )
    for key in single["weights"]:
        torch.testing.assert_close(
            ddp["weights"][key], single["weights"][key], rtol=1e-9, atol=1e-12
        )
    # evaluation: the same accuracy as one process; the loss up to the weights' rounding
    assert ddp["last_eval"]["test_acc"] == single["last_eval"]["test_acc"]
    assert ddp["last_eval"]["test_loss"] == pytest.approx(
        single["last_eval"]["test_loss"], rel=1e-9
    )


# --------------------------------------------------------------------------- (3) accumulation
def test_gradient_accumulation_2_by_half_batch_equals_the_batch(ranks):
    whole, accum = ranks[0]["rigl64"], ranks[0]["rigl64_accum"]
    # the same optimizer steps (20 per epoch: 40 micro-batches of b/2, the last one short)
    assert accum["steps"] == whole["steps"]
    assert _update_steps(accum) == _update_steps(whole)  # T_end, Delta T in optimizer steps
    for ua, uw in zip(accum["updates"], whole["updates"], strict=True):
        for key in uw["masks"]:
            assert torch.equal(ua["masks"][key], uw["masks"][key]), (ua["step"], key)
        for key in uw["weights"]:
            torch.testing.assert_close(
                ua["weights"][key], uw["weights"][key], rtol=1e-9, atol=1e-12
            )
    assert (
        ranks[1]["rigl64_accum"]["updates"][-1]["all_ranks"]
        == [accum["updates"][-1]["fingerprints"]] * WORLD
    )


# --------------------------------------------------------------------------- (4) torchrun e2e
TORCHRUN_ARGS = [
    "dataset=digits",
    "model=lenet-300-100",
    "optimizer.epochs=2",
    "masking.interval=5",
    "progress=false",
    "device=cpu",
    "dataset.max_threads=1",
]


def _torchrun() -> list[str]:
    exe = shutil.which("torchrun")
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    return env


def test_torchrun_trains_with_ddp_and_rank_0_alone_writes(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [*_torchrun(), "--standalone", f"--nproc_per_node={WORLD}", "-m", "sparsetrain",
           *TORCHRUN_ARGS, f"hydra.run.dir={run_dir}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # one summary, one results table (rank 0 prints), one copy of every metrics line
    assert [p.parent for p in tmp_path.rglob("summary.json")] == [run_dir]
    assert proc.stdout.count("test accuracy") == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["steps"] == math.ceil(1294 / 64) * 2  # global batch 64, as in one process
    assert summary["actual_density"] == pytest.approx(0.2, abs=1e-3)
    assert summary["test_accuracy"] > 0.6
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines if x["type"] == "eval"] == [1, 2]
    updates = [x["step"] for x in lines if x["type"] == "mask_update"]
    assert updates == list(range(5, 32, 5))  # end_when 0.75 of 42 steps
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    ckpt = torch.load(run_dir / "ckpts" / "last.pt", weights_only=True)
    assert ckpt["position"]["step"] == 42 and ckpt["finished"]
    assert all(not k.startswith("module.") for k in ckpt["model"])  # unwrapped from DDP


# --------------------------------------------------------------------------- launchers (no processes)
@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, (0, 1, 0, "single")),
        (
            {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "29500"},
            (3, 4, 1, "torchrun"),
        ),
        (  # submitit_slurm: SUBMITIT_EXECUTOR=slurm, srun started one task per rank
            {"SUBMITIT_EXECUTOR": "slurm", "SLURM_PROCID": "5", "SLURM_NTASKS": "8",
             "SLURM_LOCALID": "1", "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "gpu[003-004]"},
            (5, 8, 1, "slurm"),
        ),
        (  # plain srun: a job step of 2 tasks
            {"SLURM_STEP_NUM_TASKS": "2", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
             "SLURM_LOCALID": "1", "SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "n1"},
            (1, 2, 1, "slurm"),
        ),
        (  # a batch script that asked for 4 tasks but runs python once: one process
            {"SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_JOB_ID": "9"},
            (0, 1, 0, "single"),
        ),
        (
            {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_NTASKS": "2",
             "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1",
             "SUBMITIT_LOCAL_JOB_ID": "123"},
            (1, 2, 1, "submitit_local"),
        ),
    ],
)  # fmt: skip
def test_ranks_come_from_the_launcher_environment(environ, expected):
    from sparsetrain.distributed import detect

    env = detect(environ)
    assert (env.rank, env.world_size, env.local_rank, env.launcher) == expected
    if env.launcher == "slurm":
        assert env.master_addr in ("gpu003", "n1") and 20000 <= env.master_port < 60000
        assert detect(environ).master_port == env.master_port  # every task derives the same


def test_first_host_of_a_slurm_node_list():
    from sparsetrain.distributed import first_host

    assert first_host("node[003-005,9],gpu7") == "node003"
    assert first_host("gpu7,node[1-2]") == "gpu7"
    assert first_host("rack[2-3]-n[10-11]") == "rack2-n10"


def test_global_batch_must_divide_among_the_ranks(monkeypatch):
    from hydra import compose, initialize_config_module

    from sparsetrain.config import register_configs
    from sparsetrain.errors import ConfigError
    from sparsetrain.train.runner import validate

    register_configs()
    with initialize_config_module("sparsetrain.conf", version_base="1.3"):
        cfg = compose("config", overrides=["dataset=digits", "dataset.batch_size=50"])
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(
        ConfigError, match=r"batch_size=50 .* divisible by the number of processes \(4\)"
    ):
        validate(cfg)
    monkeypatch.setenv("WORLD_SIZE", "2")
    validate(cfg)  # 25 per rank


def test_sync_bn_on_cpu_is_refused_before_anything_runs(monkeypatch):
    """SyncBatchNorm has no CPU kernel: a multi-process CPU run with sync_bn=true is a config
    error at validation (nothing written), and `wrap` refuses it too."""
    from hydra import compose, initialize_config_module

    from sparsetrain import distributed
    from sparsetrain.config import register_configs
    from sparsetrain.errors import ConfigError
    from sparsetrain.train.runner import validate

    register_configs()
    with initialize_config_module("sparsetrain.conf", version_base="1.3"):
        cfg = compose("config", overrides=["dataset=digits", "device=cpu", "sync_bn=true"])
    validate(cfg)  # one process: no DDP, nothing to synchronise
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="sync_bn=true needs GPUs"):
        validate(cfg)
    monkeypatch.setattr(distributed, "group_size", lambda: 2)
    with pytest.raises(ConfigError, match="sync_bn=true needs GPUs"):
        distributed.wrap(torch.nn.BatchNorm1d(3), "cpu", sync_bn=True)


# --------------------------------------------------------------------------- slow: resume, submitit
def _torchrun_cmd(run_dir: Path, *extra: str) -> list[str]:
    return [*_torchrun(), "--standalone", f"--nproc_per_node={WORLD}", "-m", "sparsetrain",
            *TORCHRUN_ARGS, *extra, f"hydra.run.dir={run_dir}"]  # fmt: skip


@pytest.mark.slow
def test_torchrun_sigterm_checkpoints_and_every_rank_resumes_identically(tmp_path):
    """SIGTERM to torchrun (forwarded to both ranks): they agree on the step, rank 0 writes the
    checkpoint, exit; the same command resumes on both ranks from it, bit-identical to an
    uninterrupted 2-rank run."""
    import signal
    import time

    extra = ("optimizer.epochs=4", "ckpt_every_steps=5", "masking.interval=7")
    reference = tmp_path / "reference"
    subprocess.run(_torchrun_cmd(reference, *extra), env=_env(), capture_output=True, check=True,
                   timeout=240)  # fmt: skip

    run_dir = tmp_path / "run"
    proc = subprocess.Popen(_torchrun_cmd(run_dir, *extra), env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 240
    while not (run_dir / "ckpts" / "last.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # the torchrun agent (this test's own child)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    stopped = [line for line in err.splitlines() if "interrupted by SIGTERM at step" in line]
    # torchrun may tear a rank down before it prints, so require at least one report, and
    # that every rank that did report stopped at the same step
    assert stopped and len({line.split(" at step ")[1][:4] for line in stopped}) == 1
    interrupted = torch.load(run_dir / "ckpts" / "last.pt", weights_only=True)
    assert not interrupted["finished"]

    proc = subprocess.run(_torchrun_cmd(run_dir, *extra), env=_env(), capture_output=True,
                          text=True, timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming at step {interrupted['position']['step']}" in proc.stdout
    a = torch.load(run_dir / "ckpts" / "last.pt", weights_only=True)
    b = torch.load(reference / "ckpts" / "last.pt", weights_only=True)
    assert a["position"] == b["position"] and a["finished"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    masks_a, masks_b = a["sparsity"]["masks"], b["sparsity"]["masks"]
    assert all(torch.equal(masks_a[k], masks_b[k]) for k in masks_b)
    assert a["flops"] == b["flops"]


@pytest.mark.slow
def test_submitit_local_job_with_two_tasks_trains_with_ddp(tmp_path):
    """`hydra/launcher=submitit_local hydra.launcher.tasks_per_node=2`: the SLURM code path,
    ranks from the submitit environment; rank 0 alone writes."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cmd = [sys.executable, "-m", "sparsetrain", "-m", "hydra/launcher=submitit_local",
           "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=5",
           *TORCHRUN_ARGS, "optimizer.epochs=1"]  # fmt: skip
    env = _env()
    env["HYDRA_FULL_ERROR"] = "1"
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summaries = list(tmp_path.rglob("summary.json"))
    assert len(summaries) == 1
    assert json.loads(summaries[0].read_text())["steps"] == math.ceil(1294 / 64)
    logs = sorted(tmp_path.rglob(".submitit/*/*_log.out"))
    assert len(logs) == 2  # two tasks = two ranks; only rank 0 printed the results table
    assert sum("test accuracy" in p.read_text() for p in logs) == 1
