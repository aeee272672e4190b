"""Build a run from its config and train it: `run(cfg, run_dir) -> summary`.

Order of work: validate the whole config (`validate`, no files touched) → seed and pick the
device → load data → build model, optimizer, sparsity controller, FLOPs accountant → resume
from `<ckpt_dir>/last.pt` when `resume: true` and it exists (a finished run is only evaluated
and summarised) → `loop.train` → `summary.json` + a rich table.

`training_multiplier` k (the reference's RigL_2x): epochs × k, `decay_frequency` × k, and
`masking.end_when` × k when it is an absolute count (a fraction already scales with training).
`warmup_steps`, `start_when` and `interval` are not scaled (as in the reference).

Distributed (torchrun, or SLURM / submitit with several tasks; `sparsetrain.distributed`): every
rank runs `run` with the same config. The process group is joined first (NCCL on CUDA, each rank
on its own GPU; Gloo on CPU); `dataset.batch_size` is the global batch, each rank takes its
contiguous 1/world_size of every batch (it must divide evenly); rank 0 picks the checkpoint to
resume from and every rank loads that same file (on CPU, then into its own device); the model
is wrapped in DistributedDataParallel after the masks and any checkpoint are in place. Rank 0
alone writes metrics, checkpoints, the summary, `.hydra/` and W&B, and prints.
"""

from __future__ import annotations

import copy
import math
import os
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import sparsetrain
from sparsetrain import distributed
from sparsetrain.errors import CheckpointError, ConfigError, TrainingDiverged, choices_message
from sparsetrain.train import checkpoint as ckpt_io
from sparsetrain.train.loop import TrainSetup, TrainState, evaluate, train
from sparsetrain.train.optim import LR_SCHEDULES, OPTIMIZERS, build_optimizer, build_schedule
from sparsetrain.train.results import RunWriter
from sparsetrain.train.wandb_logger import WandbLogger

NONFINITE_POLICIES = ("stop", "skip")
#: masking config keys that are not options of `sparsify`
_NOT_OPTIONS = (
    "name",
    "density",
    "sparse_init",
    "dense",
    "print_FLOPs",
    "init_exp_name",
    "override_dir",
)


@dataclass(frozen=True)
class Plan:
    """Numbers derived from a validated config (k-scaled; steps are optimizer steps)."""

    method: Any  # MethodSpec
    info: Any  # DatasetInfo
    init: str  # canonical sparse init
    density: float  # target density (final_density for Pruning)
    width: float
    multiplier: int
    epochs: int
    n_train: int | None  # training examples after the validation split (None if unknown)
    steps_per_epoch: int | None
    total_steps: int | None
    options: dict[str, Any]  # masking options passed to sparsify


# --------------------------------------------------------------------------- validation
def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def masking_options(cfg: DictConfig, multiplier: int) -> dict[str, Any]:
    """The masking config as `sparsify` options, with absolute `end_when` scaled by k."""
    options = {
        k: v
        for k, v in OmegaConf.to_container(cfg.masking, resolve=True).items()
        if k not in _NOT_OPTIONS
    }
    end = options.get("end_when")
    if end is not None and end >= 1 and multiplier != 1:
        options["end_when"] = int(end * multiplier)
    if options.get("lottery_mask_path") and not str(cfg.masking.sparse_init).startswith("lottery"):
        options.pop("lottery_mask_path")  # only lottery inits read a mask from disk
    return options


def validate(cfg: DictConfig) -> Plan:
    """Check every trainer-level setting (and the names the other modules know) before any
    work; raise ConfigError naming the key and the fix."""
    from sparsetrain.algorithms import METHODS
    from sparsetrain.controller import MaskingOptions
    from sparsetrain.data import dataset_info
    from sparsetrain.distributions import canonical_init
    from sparsetrain.models import MODELS
    from sparsetrain.schedules import resolve_tick

    try:
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # a broken interpolation, e.g. exp_name=${nope}
        raise ConfigError(f"config does not resolve: {str(exc).splitlines()[0]}") from None

    spec = METHODS.get(cfg.masking.name)
    MODELS.get(cfg.model)
    info = dataset_info(cfg.dataset.name)
    opt = cfg.optimizer
    _require(
        str(opt.name).lower() in ("sgd", "adam"), choices_message("optimizer", opt.name, OPTIMIZERS)
    )
    init = canonical_init(str(cfg.masking.sparse_init))

    m = cfg.masking
    _require(
        isinstance(m.density, int | float) and 0 < m.density <= 1,
        f"masking.density must be in (0, 1], got {m.density}",
    )
    if m.final_density is not None:
        _require(
            0 < m.final_density <= 1,
            f"masking.final_density must be in (0, 1], got {m.final_density}",
        )
        _require(
            m.final_density <= m.density,
            f"masking.final_density ({m.final_density}) is above the starting density "
            f"masking.density ({m.density}); pruning only removes weights",
        )
    _require(m.interval > 0, f"masking.interval must be > 0 (steps or epochs), got {m.interval}")
    if init == "lottery" and spec.init_from_checkpoint:
        _check_lottery_source(cfg)

    # optimizer / schedule
    _require(opt.epochs >= 1, f"optimizer.epochs must be >= 1, got {opt.epochs}")
    _require(opt.lr > 0, f"optimizer.lr must be > 0, got {opt.lr}")
    _require(opt.weight_decay >= 0, f"optimizer.weight_decay must be >= 0, got {opt.weight_decay}")
    _require(
        opt.get("momentum", 0) >= 0, f"optimizer.momentum must be >= 0, got {opt.get('momentum')}"
    )
    _require(
        0 <= opt.label_smoothing < 1,
        f"optimizer.label_smoothing must be in [0, 1), got {opt.label_smoothing}",
    )
    _require(
        opt.decay_frequency >= 1,
        f"optimizer.decay_frequency must be >= 1 step, got {opt.decay_frequency}",
    )
    _require(
        0 < opt.decay_factor <= 1,
        f"optimizer.decay_factor must be in (0, 1], got {opt.decay_factor}",
    )
    _require(opt.warmup_steps >= 0, f"optimizer.warmup_steps must be >= 0, got {opt.warmup_steps}")
    _require(
        opt.training_multiplier >= 1,
        f"optimizer.training_multiplier must be >= 1, got {opt.training_multiplier}",
    )
    _require(
        opt.lr_schedule in LR_SCHEDULES,
        choices_message("optimizer.lr_schedule", opt.lr_schedule, LR_SCHEDULES),
    )
    _require(
        opt.gradient_accumulation >= 1,
        f"optimizer.gradient_accumulation must be >= 1, got {opt.gradient_accumulation}",
    )

    # run settings
    for key in ("log_interval", "val_interval", "keep_last_ckpts"):
        _require(cfg[key] >= 1, f"{key} must be >= 1, got {cfg[key]}")
    for key in ("ckpt_interval", "ckpt_every_steps"):
        _require(cfg[key] >= 0, f"{key} must be >= 0 (0 = off), got {cfg[key]}")
    _require(
        cfg.on_nonfinite_loss in NONFINITE_POLICIES,
        choices_message("on_nonfinite_loss", cfg.on_nonfinite_loss, NONFINITE_POLICIES),
    )
    _require(cfg.width > 0, f"width must be > 0, got {cfg.width}")
    device = resolve_device(cfg.device, quiet=True)
    _require(
        not (cfg.sync_bn and device.type == "cpu" and distributed.world_size() > 1),
        distributed.SYNC_BN_ON_CPU,
    )

    # data set size vs batch size (before loading anything)
    d = cfg.dataset
    _require(d.batch_size >= 1, f"dataset.batch_size must be >= 1, got {d.batch_size}")
    _require(
        d.test_batch_size >= 1, f"dataset.test_batch_size must be >= 1, got {d.test_batch_size}"
    )
    _require(d.max_threads >= 1, f"dataset.max_threads must be >= 1, got {d.max_threads}")
    world = distributed.world_size()
    _require(
        d.batch_size % world == 0,
        f"dataset.batch_size={d.batch_size} is the global batch and must be divisible by the "
        f"number of processes ({world}): each rank takes batch_size/{world} examples; use e.g. "
        f"dataset.batch_size={max(world, d.batch_size // world * world)}",
    )
    _require(
        0 <= d.validation_split < 1,
        f"dataset.validation_split must be in [0, 1), got {d.validation_split}",
    )
    n_train = None
    if info.num_train is not None:
        n_val = max(1, round(d.validation_split * info.num_train)) if d.validation_split > 0 else 0
        n_train = info.num_train - n_val
        _require(
            d.batch_size <= n_train,
            f"dataset.batch_size={d.batch_size} is larger than the training set "
            f"({n_train} {info.name} examples after the validation split); use at most {n_train}",
        )

    k = int(opt.training_multiplier)
    epochs = int(opt.epochs) * k
    options = masking_options(cfg, k)
    steps_per_epoch = total = None
    if n_train is not None:
        batches = math.ceil(n_train / d.batch_size)
        steps_per_epoch = math.ceil(batches / opt.gradient_accumulation)
        total = steps_per_epoch * epochs
    if not spec.dense_model:
        resolved = MaskingOptions.resolve(spec, options)  # engine's own option checks
        _check_window(resolved, spec, epochs, total, resolve_tick)

    density = (
        float(m.final_density) if spec.pruning and m.final_density is not None else float(m.density)
    )
    width = float(cfg.width)
    if spec.name == "Small_Dense":
        from sparsetrain.algorithms import small_dense_width

        width *= small_dense_width(cfg.model, info, float(m.density))
    return Plan(
        spec, info, init, density, width, k, epochs, n_train, steps_per_epoch, total, options
    )


def _check_window(
    opts: Any, spec: Any, epochs: int, total_steps: int | None, resolve_tick: Any
) -> None:
    """start_when / end_when must lie within training (steps, or epochs under epoch_end)."""
    if opts.growth_mode == "none" and not spec.pruning:
        return  # static masks: no update window
    by_epoch = opts.apply_when == "epoch_end"
    total = epochs if by_epoch else total_steps
    unit = "epochs" if by_epoch else "steps"
    end = resolve_tick(opts.end_when, total, "masking.end_when")
    start = resolve_tick(opts.start_when, total, "masking.start_when")
    if total is None or end == -1:
        return
    _require(
        end <= total,
        f"masking.end_when={opts.end_when} is beyond training ({total} {unit} with "
        f"{epochs} epochs); use a value <= {total} or a fraction in (0, 1)",
    )
    _require(
        start < end,
        f"masking.start_when={opts.start_when} must be before masking.end_when ({end} {unit}; "
        f"training has {total} {unit})",
    )


def _check_lottery_source(cfg: DictConfig) -> None:
    path = cfg.masking.lottery_mask_path
    if path and (Path(path).is_file() or (Path(path) / "ckpts" / "last.pt").is_file()):
        return
    source = str(cfg.masking.init_exp_name or "Pruning")
    method, _, init_label = source.partition("_")
    from sparsetrain.config import INIT_LABELS

    init = {v: k for k, v in reversed(list(INIT_LABELS.items()))}.get(init_label)
    extra = f" masking.sparse_init={init}" if init else ""
    density = "masking.final_density" if method == "Pruning" else "masking.density"
    command = (
        f"sparsetrain masking={method}{extra} dataset={cfg.dataset.name} model={cfg.model} "
        f"seed={cfg.seed} {density}={cfg.masking.density}"
    )
    if path and Path(path).parent.name == cfg.ckpt_dir:  # make it land where it is expected
        command += f" 'hydra.run.dir=\"{Path(path).parent.parent}\"'"
    raise ConfigError(
        f"{cfg.masking.name} needs the final checkpoint of a {source} run, not found at "
        f"{path or '(masking.lottery_mask_path unset)'}; create it first with: {command}"
    )


def resolve_device(name: str, quiet: bool = False) -> torch.device:
    """`auto` → cuda if available else cpu; `cuda` without CUDA falls back to cpu (reference)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(
            choices_message("device", name, ("auto", "cpu", "cuda", "cuda:<index>", "mps"))
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        if not quiet:
            print(f"warning: device={name} but CUDA is not available; using cpu", file=sys.stderr)
        return torch.device("cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps but MPS is not available; use device=auto or device=cpu")
    return device


def check_writable(run_dir: Path) -> None:
    """The run directory must be creatable and writable (checked with a probe file)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"output directory {run_dir} is not writable ({exc.strerror or exc}); "
            "choose another with hydra.run.dir=<dir>"
        ) from None


# --------------------------------------------------------------------------- setup helpers
def seed_everything(seed: int, device: torch.device) -> None:
    """Seed python/numpy/torch. On CPU, PyTorch's kernels are deterministic for a fixed thread
    count (`dataset.max_threads`), so we skip `torch.use_deterministic_algorithms` there (it
    imports torch._inductor: ~4 s of start-up); on CUDA we turn it on (warn-only)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def _state_dict_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def preflight(cfg: DictConfig, run_dir: Path) -> None:
    """Validate the config and any checkpoint this run would resume from — nothing is written.

    The CLI calls this before it writes `.hydra/`, so bad input overwrites nothing."""
    validate(cfg)
    for seed, seed_dir in seed_dirs(cfg, run_dir):
        path = ckpt_io.latest(seed_dir / cfg.ckpt_dir) if cfg.resume else None
        if path is not None:
            seed_cfg = _with_seed(cfg, seed)
            ckpt = ckpt_io.load(path)
            if "config_hash" in ckpt:
                ckpt_io.check_config(ckpt, path, ckpt_io.config_items(seed_cfg))


def seed_dirs(cfg: DictConfig, run_dir: Path) -> list[tuple[int, Path]]:
    """[(seed, directory)]: the run dir itself, or `seed=<s>` subdirectories for multi_seed."""
    if cfg.multi_seed:
        return [(int(s), Path(run_dir) / f"seed={int(s)}") for s in cfg.multi_seed]
    return [(int(cfg.seed), Path(run_dir))]


def _with_seed(cfg: DictConfig, seed: int) -> DictConfig:
    if int(cfg.seed) == seed:
        return cfg
    out = copy.deepcopy(cfg)
    out.seed = seed
    return out


# --------------------------------------------------------------------------- run
def run_seeds(cfg: DictConfig, run_dir: str | os.PathLike) -> tuple[float | None, list[dict]]:
    """Run every seed of `multi_seed` (or just `seed`); (mean val accuracy, summaries)."""
    summaries = [run(_with_seed(cfg, seed), d) for seed, d in seed_dirs(cfg, Path(run_dir))]
    scores = [
        s["val_accuracy"] if s["val_accuracy"] is not None else s["test_accuracy"]
        for s in summaries
    ]
    scores = [x for x in scores if x is not None]
    return (sum(scores) / len(scores) if scores else None), summaries


def run(cfg: DictConfig, run_dir: str | os.PathLike) -> dict[str, Any]:
    """Train (or resume, or just evaluate a finished) run in `run_dir`; return its summary."""
    from sparsetrain.controller import sparsify
    from sparsetrain.data import Loader, load_splits
    from sparsetrain.flops import FlopsAccountant
    from sparsetrain.masks import unwrap
    from sparsetrain.models import build

    plan = validate(cfg)
    run_dir = Path(run_dir)
    dist_env = distributed.init(resolve_device(cfg.device))  # no-op in a single process
    rank, world, device = dist_env.rank, dist_env.world_size, dist_env.device
    main_rank = rank == 0
    error = None
    if main_rank:
        try:
            check_writable(run_dir)
        except ConfigError as exc:
            error = exc
    distributed.agree(error, "to write the run directory")  # raises on every rank, or none
    torch.set_num_threads(int(cfg.dataset.max_threads))
    seed_everything(int(cfg.seed), device)
    console = _console(cfg) if main_rank else None

    # ---- data (a node's first rank fetches / unpacks it; the node's other ranks then read it)
    info = plan.info
    first_on_node, error = dist_env.local_rank == 0, None
    if not first_on_node:
        distributed.agree(None, "to load the data")  # wait for the node's first rank
    try:
        splits = load_splits(
            info.name, cfg.dataset.root, cfg.dataset.validation_split, split_seed=0, device=device
        )
    except Exception as exc:
        error = exc
    if first_on_node:
        distributed.agree(error, "to load the data")
    elif error is not None:
        raise error
    augment = info.augment if cfg.dataset.get("augment", True) else None
    bs, tbs = int(cfg.dataset.batch_size), int(cfg.dataset.test_batch_size)
    train_loader = Loader(
        *splits.train,
        bs,
        shuffle=True,
        augment=augment,
        info=info,
        seed=int(cfg.seed),
        rank=rank,
        world_size=world,
    )
    val_loader = None
    if splits.val is not None:
        val_loader = Loader(
            *splits.val, min(tbs, len(splits.val[1])), shuffle=False, info=info, seed=0
        )
    test_loader = Loader(
        *splits.test, min(tbs, len(splits.test[1])), shuffle=False, info=info, seed=0
    )
    accum = int(cfg.optimizer.gradient_accumulation)
    steps_per_epoch = math.ceil(len(train_loader) / accum)
    total_steps = steps_per_epoch * plan.epochs

    # ---- model, optimizer, sparsity controller, FLOPs accountant
    model = build(cfg.model, info, width=plan.width).to(device)
    optimizer = build_optimizer(model.parameters(), cfg.optimizer)
    ctl = sparsify(
        model,
        optimizer,
        method=plan.method.name,
        density=float(cfg.masking.density),
        init=str(cfg.masking.sparse_init),
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        seed=int(cfg.seed),
        **plan.options,
    )
    reference = None
    if plan.width != float(cfg.width):  # Small_Dense: FLOPs relative to the full-width model
        reference = build(cfg.model, info, width=float(cfg.width)).to(device)
    accountant = FlopsAccountant.for_model(
        model, info.input_shape, plan.multiplier, reference=reference
    )
    ctl.attach_flops(accountant)
    schedule = build_schedule(cfg.optimizer, total_steps, plan.multiplier)
    init_model = _state_dict_copy(model)  # step-0 weights (after masking; Lottery: rewound)

    # ---- resume
    writer = RunWriter(run_dir, enabled=main_rank)
    ckpts = ckpt_io.CheckpointManager(
        run_dir / cfg.ckpt_dir, cfg.keep_last_ckpts, enabled=main_rank
    )
    items = ckpt_io.config_items(cfg)
    state = TrainState()
    path = ckpt_io.latest(ckpts.dir) if cfg.resume else None
    path = distributed.broadcast_object(path, src=0)  # every rank resumes from rank 0's choice
    ckpt, error = None, None
    if path is not None:
        try:  # the same file on every rank; a rank that cannot read it stops all of them
            ckpt = ckpt_io.load(path)
            if "config_hash" in ckpt:
                ckpt_io.check_config(ckpt, path, items)
                state, init_model = _restore(ckpt, path, unwrap(model), optimizer, ctl, accountant)
        except Exception as exc:
            error = exc
        distributed.agree(error, f"to resume from {path}")
    if ckpt is not None:
        if "config_hash" not in ckpt:  # a reference system's checkpoint: evaluate it only
            return _evaluate_foreign(cfg, plan, ckpt, path, unwrap(model), ctl, accountant, val_loader,
                                     test_loader, writer, console)  # fmt: skip
        if console is not None:
            what = (
                "finished run: evaluating" if state.finished else f"resuming at step {state.step}"
            )
            console.print(f"[bold]{what}[/] from {path}")
    if path is not None:
        writer.truncate_after(state.step)  # lines after the checkpoint will be logged again
    elif main_rank:
        _fresh_start(writer, ckpts)
    # DDP last: it broadcasts rank 0's weights and buffers (equal on every rank already: same
    # seed, same masks, same checkpoint) and all-reduces gradients from here on
    train_model = distributed.wrap(model, device, sync_bn=cfg.sync_bn)

    def save_checkpoint(st: TrainState, epoch_file: int | None) -> Path | None:
        payload = {
            "format": ckpt_io.CKPT_FORMAT,
            "version": sparsetrain.__version__,
            "config_hash": ckpt_io.config_hash(items),
            "config": items,
            "model": unwrap(model).state_dict(),
            "init_model": init_model,
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "sparsity": ctl.state_dict(),
            "flops": accountant.state_dict(),
            "rng": ckpt_io.rng_state(),
            "position": {"epoch": st.epoch, "batch": st.batch, "step": st.step},
            "finished": st.finished,
            "wall_seconds": st.wall_seconds,
            "skipped_batches": st.skipped_batches,
            "last_eval": st.last_eval,
        }
        return ckpts.save(payload, epoch_file)

    wandb = WandbLogger.create(cfg, run_dir, enabled=main_rank)
    setup = TrainSetup(
        model=train_model,
        optimizer=optimizer,
        controller=ctl,
        schedule=schedule,
        train_loader=train_loader,
        val_loader=val_loader,
        test_loader=test_loader,
        epochs=plan.epochs,
        save_checkpoint=save_checkpoint,
        writer=writer,
        wandb=wandb if wandb.enabled else None,
        label_smoothing=float(cfg.optimizer.label_smoothing),
        accumulation=accum,
        log_interval=int(cfg.log_interval),
        val_interval=int(cfg.val_interval),
        ckpt_interval=int(cfg.ckpt_interval),
        ckpt_every_steps=int(cfg.ckpt_every_steps),
        on_nonfinite_loss=str(cfg.on_nonfinite_loss),
        fixed_shuffle=bool(cfg.dataset.fixed_shuffle),
        progress=bool(cfg.progress),
        console=console,
    )
    exit_code = 1
    try:
        if state.finished:
            last_eval = _final_eval(model, val_loader, test_loader, state)
        else:
            state = train(setup, state)
            last_eval = state.last_eval
        summary = _summary(cfg, plan, state, last_eval, ctl, accountant, status="completed")
        writer.write_summary(summary)
        wandb.summary(summary)
        exit_code = 0
    except TrainingDiverged:
        writer.write_summary(
            _summary(cfg, plan, state, state.last_eval, ctl, accountant, status="diverged")
        )
        raise
    finally:
        wandb.finish(exit_code)
    if console is not None:
        _print_table(console, summary, run_dir)
    return summary


def _fresh_start(writer: RunWriter, ckpts: ckpt_io.CheckpointManager) -> None:
    """A run that starts from step 0 (no checkpoint, or resume=false) drops what an earlier
    run left in the same directory, so stale epoch files and summaries cannot mix in."""
    writer.truncate_after(-1)
    writer.summary_path.unlink(missing_ok=True)
    for _, old in ckpt_io.epoch_checkpoints(ckpts.dir):
        old.unlink(missing_ok=True)
    ckpts.last_path.unlink(missing_ok=True)


def _restore(
    ckpt: dict, path: Path, model: Any, optimizer: Any, ctl: Any, accountant: Any
) -> tuple[TrainState, dict]:
    ckpt_io.check_model(ckpt["model"], model, path)
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        ctl.load_state_dict(ckpt["sparsity"])
        accountant.load_state_dict(ckpt["flops"])
        ckpt_io.set_rng_state(ckpt["rng"])
        pos = ckpt["position"]
        state = TrainState(
            epoch=int(pos["epoch"]),
            batch=int(pos["batch"]),
            step=int(pos["step"]),
            finished=bool(ckpt.get("finished", False)),
            wall_seconds=float(ckpt.get("wall_seconds", 0.0)),
            skipped_batches=int(ckpt.get("skipped_batches", 0)),
            last_eval=ckpt.get("last_eval"),
        )
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is incomplete or incompatible ({type(exc).__name__}: {exc})"
        ) from None
    return state, ckpt.get("init_model") or _state_dict_copy(model)


def _final_eval(model: Any, val_loader: Any, test_loader: Any, state: TrainState) -> dict[str, Any]:
    val_loss = val_acc = None
    if val_loader is not None:
        val_loss, val_acc = evaluate(model, val_loader)
    test_loss, test_acc = evaluate(model, test_loader)
    return {"step": state.step, "epoch": state.epoch, "val_loss": val_loss, "val_acc": val_acc,
            "test_loss": test_loss, "test_acc": test_acc}  # fmt: skip


def _evaluate_foreign(
    cfg, plan, ckpt, path, model, ctl, accountant, val_loader, test_loader, writer, console
):
    """A reference-system checkpoint (`state_dict` + `epoch`): evaluate and summarise it."""
    weights = ckpt.get("state_dict") or ckpt.get("model")
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path} is not a sparsetrain checkpoint and holds no 'state_dict'")
    weights = {k.removeprefix("module."): v for k, v in weights.items()}
    epoch = int(ckpt.get("epoch", 0) or 0)
    if epoch < plan.epochs:
        raise CheckpointError(
            f"{path} is a reference-system checkpoint at epoch {epoch} of {plan.epochs}: it can be "
            "evaluated once finished but not resumed; use resume=false to train from scratch"
        )
    ckpt_io.check_model(weights, model, path)
    model.load_state_dict(weights)
    masks = {n: (model.state_dict()[n] != 0) for n in ctl.layer_densities()}
    accountant.on_masks_changed({n: float(m.float().mean()) for n, m in masks.items()})
    state = TrainState(epoch=epoch, step=int(ckpt.get("step", 0) or 0), finished=True)
    last_eval = _final_eval(model, val_loader, test_loader, state)
    summary = _summary(cfg, plan, state, last_eval, ctl, accountant, status="evaluated")
    summary["layer_densities"] = accountant.layer_densities
    writer.write_summary(summary)
    if console is not None:
        _print_table(console, summary, writer.run_dir)
    return summary


def _summary(cfg, plan, state, last_eval, ctl, accountant, status: str) -> dict[str, Any]:
    ev = last_eval or {}
    flops = accountant.summary()
    return {
        "method": plan.method.name,
        "init": plan.init,
        "density": plan.density,
        "actual_density": ctl.density(),
        "dataset": plan.info.name,
        "model": str(cfg.model),
        "width": plan.width,
        "seed": int(cfg.seed),
        "epochs": plan.epochs,
        "steps": state.step,
        "training_multiplier": plan.multiplier,
        "val_accuracy": ev.get("val_acc"),
        "test_accuracy": ev.get("test_acc"),
        "val_loss": ev.get("val_loss"),
        "test_loss": ev.get("test_loss"),
        "train_flops": flops["train_flops"],
        "test_flops": flops["test_flops"],
        "train_flops_total": flops["train_flops_total"],
        "test_flops_total": flops["test_flops_total"],
        "dense_flops": flops["dense_flops"],
        "wall_seconds": state.wall_seconds,
        "exp_name": str(cfg.exp_name),
        "layer_densities": ctl.layer_densities(),
        "optimizer": str(cfg.optimizer.name),
        "lr": float(cfg.optimizer.lr),
        "batch_size": int(cfg.dataset.batch_size),
        "prune_rate": float(cfg.masking.prune_rate),
        "interval": int(cfg.masking.interval),
        "redistribution_mode": str(cfg.masking.redistribution_mode),
        "skipped_batches": state.skipped_batches,
        "version": sparsetrain.__version__,
        "status": status,
    }


def _console(cfg: DictConfig) -> Any:
    from rich.console import Console

    return Console(highlight=False)


def _print_table(console: Any, s: dict[str, Any], run_dir: Path) -> None:
    from rich.table import Table

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    table = Table(title=f"{s['exp_name']} · {s['model']} on {s['dataset']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("method / init", f"{s['method']} / {s['init']}"),
        ("density (target / actual)", f"{s['density']:.4g} / {s['actual_density']:.4g}"),
        ("epochs / steps", f"{s['epochs']} / {s['steps']}"),
        ("val accuracy", pct(s["val_accuracy"])),
        ("test accuracy", pct(s["test_accuracy"])),
        ("train FLOPs (x dense)", f"{s['train_flops']:.3f}"),
        ("test FLOPs (x dense)", f"{s['test_flops']:.3f}"),
        ("wall time", f"{s['wall_seconds']:.1f} s"),
        ("status", s["status"]),
        ("run directory", str(run_dir)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
