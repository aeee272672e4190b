"""torch.distributed for the trainer: find the ranks, start the process group, small helpers.

    env = distributed.init("cuda")     # no-op (world size 1) outside torchrun / SLURM
    model = distributed.wrap(model, env.device)   # DistributedDataParallel when world size > 1
    ...
    distributed.teardown()

Where the ranks come from, first match wins:

* **torchrun** (and any `env://` launcher): `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
  `MASTER_ADDR`, `MASTER_PORT`.
* **SLURM** (submitit's `submitit_slurm` launcher with `tasks_per_node > 1`, or `srun`): one
  task per rank, `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`; the rendezvous is the first
  host of the step's node list (where SLURM's default block distribution puts rank 0), on
  `MASTER_PORT` (default: a port derived from the job id, the same on every task). Only inside a job *step* (`srun`, which submitit uses) — a batch script
  that merely asked for several tasks is a single process.
* **submitit_local** with `tasks_per_node > 1`: `SUBMITIT_LOCAL_GLOBALID`,
  `SUBMITIT_LOCAL_NTASKS`, `SUBMITIT_LOCAL_LOCALID`, on 127.0.0.1.

The backend is NCCL when the run's device is CUDA, Gloo otherwise; on CUDA each rank takes
GPU `LOCAL_RANK` (modulo the visible GPUs). Collectives time out after
`SPARSETRAIN_DIST_TIMEOUT` seconds (default 1800) rather than hang. Every helper below is also
correct in a single process (world size 1, nothing initialised), so callers never branch on it.

Nothing sparse is communicated: every rank computes the same masks by itself (see the
`sparsetrain.controller` docstring and docs/distributed.md, "How identical masks are
guaranteed"); `fingerprint` + `check_identical` verify it at run time.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import hashlib
import os
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sparsetrain.errors import ConfigError, SparsetrainError

#: seconds a collective may wait for the other ranks before failing (instead of hanging forever)
TIMEOUT_S = int(os.environ.get("SPARSETRAIN_DIST_TIMEOUT", "1800"))


class RanksDiverged(SparsetrainError):
    """Ranks that must hold identical state do not (a bug: please report it)."""


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    launcher: str = "single"  # single | torchrun | slurm | submitit_local
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


_created_group = False  # we initialised the default group (so we tear it down)
_control_group: Any = None  # a Gloo group for host-side flags (the default one on CPU)
_atexit_registered = False


# --------------------------------------------------------------------------- detection
def _int(environ: Mapping[str, str], key: str, default: int | None = None) -> int | None:
    value = environ.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {key}={value!r} is not an integer") from None


def first_host(nodelist: str) -> str:
    """The first host name of a SLURM node list: `node[003-005,9],gpu7` -> `node003`."""
    group = re.split(r",(?![^\[]*\])", nodelist.strip())[0]

    def first(match: re.Match[str]) -> str:
        return re.split(r"[,-]", match.group(1))[0]

    return re.sub(r"\[([^\]]*)\]", first, group)


def _port_from(job_id: str) -> int:
    """A rendezvous port that every task of a job computes alike (20000-59999)."""
    return 20000 + zlib.crc32(job_id.encode()) % 40000


def detect(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Ranks from the launcher's environment (see the module docstring); world size 1 if none."""
    env = os.environ if environ is None else environ
    world = _int(env, "WORLD_SIZE")
    if world is not None and "RANK" in env:  # torchrun / env://
        return DistEnv(
            rank=_int(env, "RANK", 0),
            world_size=world,
            local_rank=_int(env, "LOCAL_RANK", 0),
            master_addr=env.get("MASTER_ADDR"),
            master_port=_int(env, "MASTER_PORT"),
            launcher="torchrun",
        )
    step_tasks = _int(env, "SLURM_STEP_NUM_TASKS")
    slurm_tasks = _int(env, "SLURM_NTASKS")
    in_step = step_tasks is not None or env.get("SUBMITIT_EXECUTOR") == "slurm"
    if in_step and "SLURM_PROCID" in env and (step_tasks or slurm_tasks or 1) > 1:
        job = env.get("SLURM_JOB_ID", "0")
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
        return DistEnv(
            rank=_int(env, "SLURM_PROCID", 0),
            world_size=step_tasks or slurm_tasks or 1,
            local_rank=_int(env, "SLURM_LOCALID", 0),
            master_addr=env.get("MASTER_ADDR") or first_host(nodes) or "127.0.0.1",
            master_port=_int(env, "MASTER_PORT") or _port_from(job),
            launcher="slurm",
        )
    local_tasks = _int(env, "SUBMITIT_LOCAL_NTASKS")
    if env.get("SUBMITIT_EXECUTOR") == "local" and (local_tasks or 1) > 1:
        return DistEnv(
            rank=_int(env, "SUBMITIT_LOCAL_GLOBALID", 0),
            world_size=local_tasks,
            local_rank=_int(env, "SUBMITIT_LOCAL_LOCALID", 0),
            master_addr=env.get("MASTER_ADDR") or "127.0.0.1",
            master_port=_int(env, "MASTER_PORT")
            or _port_from(env.get("SUBMITIT_LOCAL_JOB_ID", "0")),
            launcher="submitit_local",
        )
    return DistEnv()


# --------------------------------------------------------------------------- life cycle
def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (from the process group, else the launcher's environment)."""
    return dist.get_rank() if is_initialized() else detect().rank


def world_size() -> int:
    """Number of processes (from the process group, else the launcher's environment)."""
    return dist.get_world_size() if is_initialized() else detect().world_size


def group_size() -> int:
    """Ranks in the initialised process group (1 when there is none): what DDP averages over."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 — the one process that writes files, W&B and the console."""
    return rank() == 0


def rank_device(device: torch.device | str, local_rank: int) -> torch.device:
    """On CUDA, GPU `local_rank` (modulo the visible GPUs: a task may see only its own);
    other devices unchanged."""
    device = torch.device(device)
    if device.type != "cuda":
        return device
    count = max(1, torch.cuda.device_count())
    return torch.device("cuda", local_rank % count)


def init(device: torch.device | str = "cpu") -> DistEnv:
    """Join the job's process group if the launcher started several ranks; idempotent.

    Returns this process's `DistEnv` whose `device` is where the rank must train (on CUDA its
    own GPU). World size 1: nothing is initialised and `device` is returned unchanged. A group
    that already exists (e.g. the user's own script) is used as it is."""
    global _created_group, _control_group, _atexit_registered
    device = torch.device(device)
    if is_initialized():
        found = detect()
        env = DistEnv(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=found.local_rank,
            master_addr=found.master_addr,
            master_port=found.master_port,
            launcher=found.launcher,
        )
    else:
        env = detect()
        if not env.distributed:
            return DistEnv(device=device)
        if not dist.is_available():
            raise ConfigError(
                f"{env.launcher} started {env.world_size} processes but this PyTorch build has "
                "no torch.distributed"
            )
        if env.master_addr is None or env.master_port is None:
            raise ConfigError(
                f"{env.launcher}: MASTER_ADDR/MASTER_PORT are not set; use torchrun "
                "(--standalone for one machine) or set both"
            )
    if device.type == "cuda":
        device = rank_device(device, env.local_rank)
        torch.cuda.set_device(device)
    if not is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # torchrun's agent already serves the rendezvous store on MASTER_PORT: join it (env://)
        url = f"tcp://{env.master_addr}:{env.master_port}"
        url = "env://" if env.launcher == "torchrun" else url
        dist.init_process_group(
            backend,
            init_method=url,
            rank=env.rank,
            world_size=env.world_size,
            timeout=datetime.timedelta(seconds=TIMEOUT_S),
            device_id=device if device.type == "cuda" else None,
        )
        _created_group = True
        if not _atexit_registered:
            atexit.register(teardown)
            _atexit_registered = True
    if _control_group is None:
        gloo = dist.get_backend() == "gloo"
        _control_group = dist.group.WORLD if gloo else dist.new_group(backend="gloo")
    return dataclasses.replace(env, device=device)


def teardown() -> None:
    """Destroy the process group if `init` created it (safe to call twice)."""
    global _created_group, _control_group
    if _created_group and is_initialized():
        with contextlib.suppress(Exception):  # best effort at exit
            dist.destroy_process_group()
    _created_group = False
    _control_group = None


SYNC_BN_ON_CPU = (
    "sync_bn=true needs GPUs: PyTorch's SyncBatchNorm does not run on CPU; "
    "use sync_bn=false (per-rank BatchNorm statistics) for CPU runs"
)


def wrap(model: nn.Module, device: torch.device | str, sync_bn: bool = False) -> nn.Module:
    """DistributedDataParallel around `model` when world size > 1, else `model` itself.

    DDP broadcasts rank 0's parameters and buffers at construction (they are equal anyway:
    same seed everywhere, or the same checkpoint) and before every forward (buffers).

    `sync_bn`: BatchNorm layers become SyncBatchNorm (statistics over the global batch, not
    each rank's slice). The modules are replaced in place and keep their parameter objects, so
    the optimizer and the sparsity controller are unaffected; state-dict keys are unchanged.
    PyTorch's SyncBatchNorm runs on GPUs only."""
    if group_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device(device)
    if sync_bn:
        if device.type == "cpu":
            raise ConfigError(SYNC_BN_ON_CPU)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


# --------------------------------------------------------------------------- collectives
def barrier() -> None:
    if is_initialized() and dist.get_world_size() > 1:
        dist.barrier(group=_control_group)


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks, in place (identity in one process)."""
    if is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """[rank 0's tensor, rank 1's, ...] (same shape on every rank)."""
    if not is_initialized() or dist.get_world_size() == 1:
        return [tensor.clone()]
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor.contiguous())
    return out


def all_gather_object(obj: Any) -> list[Any]:
    """[rank 0's object, rank 1's, ...] for small picklable objects (host side, Gloo)."""
    if not is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_control_group)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank (small picklable objects, host side)."""
    if not is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_control_group)
    return box[0]


def any_flag(flag: bool) -> bool:
    """True on every rank if `flag` is true on any rank (a host-side Gloo all-reduce: no
    device sync). Used to stop all ranks at the same step on SIGTERM."""
    if not is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group)
    return bool(t[0])


def agree(error: BaseException | None, what: str) -> None:
    """Raise on every rank if any rank failed `what` (so no rank waits for a failed one).

    The failing rank re-raises its own error; the others raise `SparsetrainError` naming it."""
    errors = all_gather_object(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if failed:
        r, message = failed[0]
        raise SparsetrainError(f"rank {r} failed {what}: {message}")


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s buffers (BatchNorm running statistics) to every rank. Under DDP each
    rank updates them from its own shard after the last forward; evaluation needs one copy."""
    if not is_initialized() or dist.get_world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)


# --------------------------------------------------------------------------- verification
def fingerprint(tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 (16 hex) over names, dtypes, shapes and bytes: equal iff bit-identical.

    Bool masks are bit-packed first (8x less to hash and move off the device)."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    h = hashlib.sha256()
    for name, t in sorted(items, key=lambda kv: kv[0]):
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.dtype == torch.bool:
            flat = t.reshape(-1)
            pad = (-flat.numel()) % 8
            if pad:
                flat = torch.cat([flat, flat.new_zeros(pad)])
            weights = torch.tensor(
                [128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=t.device
            )
            t = (flat.view(-1, 8).to(torch.uint8) * weights).sum(1, dtype=torch.uint8)
        h.update(t.reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def check_identical(what: str, tensors: Mapping[str, torch.Tensor], step: int) -> None:
    """Raise `RanksDiverged` on every rank if `tensors` differ between ranks (host work: call
    at mask updates, not per step). A no-op in one process."""
    if not is_initialized() or dist.get_world_size() == 1:
        return
    hashes = all_gather_object(fingerprint(tensors))
    if len(set(hashes)) > 1:
        raise RanksDiverged(
            f"{what} differ between ranks after step {step} (fingerprints by rank: "
            f"{', '.join(hashes)}); the masks must be computed identically on every rank"
        )
