"""The training loop: one readable function, `train(setup, state)`.

Per optimizer step: set the LR (a pure function of the step), run `gradient_accumulation`
micro-batches forward/backward, `controller.step()` (optimizer step + masks + mask updates),
zero the gradients. Loss and accuracy stay on the device in a small window buffer; the host
reads them only every `log_interval` steps, at epoch ends and before checkpoints.

The gradient of a step is the mean over all the examples of its micro-batches on all ranks:
micro-batch i on a rank contributes `loss_i * n_i / N` (n_i its examples, N the step's global
count, known from the loader without communication), times the world size because DDP averages
over ranks. So 2 ranks x b/2, or accumulation 2 x b/2, give the gradient of one batch b, also
for a short last batch. Under DDP (`model` is DistributedDataParallel) the all-reduce runs only
on the last micro-batch (`no_sync`); the controller's pre-step hook then sees the all-reduced
gradient on every rank. Logged loss/accuracy are over the global batch (the window is summed
over ranks when it is read), evaluation is sharded by whole batches and summed, so every rank
holds the single-process numbers. Checks that decide control flow (non-finite loss, a stop
signal) are agreed by all ranks, so they always take the same branch at the same step.

Non-finite loss (`on_nonfinite_loss`):
* `stop` (default): no per-step host sync. Each step's loss goes into the device-side window;
  when the window is read (every `log_interval` steps, at epoch end, and *before every
  checkpoint*, so a checkpoint never holds a diverged model) a NaN/inf entry raises
  `TrainingDiverged` naming the first bad step. The last good checkpoint is left as it was.
* `skip`: one host sync per optimizer step (like AMP's GradScaler) to decide whether to step;
  a batch whose loss is not finite is dropped (no optimizer step, no LR/mask step).

SIGTERM / SIGINT (preemption, Ctrl-C): the current step finishes, a checkpoint is written, and
`TrainingInterrupted` (exit code 128 + signal number) is raised; a second signal aborts at once.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain import distributed
from sparsetrain.errors import SparsetrainError, TrainingDiverged
from sparsetrain.masks import unwrap


class TrainingInterrupted(SparsetrainError):
    """Stopped by SIGTERM/SIGINT after writing a checkpoint; rerun the command to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


@dataclass
class TrainState:
    """Where training is; saved in every checkpoint as `position` (+ the other fields)."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # micro-batches of the current epoch already consumed
    step: int = 0  # optimizer steps taken
    finished: bool = False
    wall_seconds: float = 0.0  # training time, summed over resumes
    skipped_batches: int = 0  # non-finite batches dropped (on_nonfinite_loss=skip)
    last_eval: dict[str, Any] | None = None


@dataclass
class TrainSetup:
    """Everything `train` needs, built by `sparsetrain.train.runner`."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    controller: Any  # SparsityController (also for Dense: it then only steps the optimizer)
    schedule: Any  # LRSchedule: .apply(optimizer, step) -> lr
    train_loader: Any  # sparsetrain.data.Loader
    val_loader: Any | None
    test_loader: Any
    epochs: int
    save_checkpoint: Callable[[TrainState, int | None], Path | None]  # (state, epoch file N)
    writer: Any  # RunWriter
    wandb: Any = None  # WandbLogger
    label_smoothing: float = 0.0
    accumulation: int = 1
    log_interval: int = 100
    val_interval: int = 1
    ckpt_interval: int = 0  # epochs; 0 = only at the end
    ckpt_every_steps: int = 0
    on_nonfinite_loss: str = "stop"
    fixed_shuffle: bool = False  # reference option: the same batch order every epoch
    progress: bool = True
    console: Any = None
    extra_log: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers
class _Window:
    """Per-step loss and correct counts, kept on the device until the host reads them."""

    def __init__(self, size: int, device: torch.device):
        self.loss = torch.zeros(size, device=device, dtype=torch.float32)
        self.correct = torch.zeros(size, device=device, dtype=torch.int64)
        self.n = 0
        self.examples = 0
        self.first_step = 0

    def add(self, step: int, loss: torch.Tensor, correct: torch.Tensor, examples: int) -> None:
        if self.n == 0:
            self.first_step = step
        self.loss[self.n] = loss
        self.correct[self.n] = correct
        self.n += 1
        self.examples += examples

    def read(self, reduce: Callable[[torch.Tensor], Any] | None = None) -> Any:
        """(mean loss, accuracy, first non-finite step or None), or None if empty; resets.
        One host sync. `reduce` sums the per-step entries over ranks (in place) first."""
        if self.n == 0:
            return None
        if reduce is not None:
            reduce(self.loss[: self.n])
            reduce(self.correct[: self.n])
        losses = self.loss[: self.n].tolist()
        correct = int(self.correct[: self.n].sum())
        bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
        first_bad = None if bad is None else self.first_step + bad
        result = (sum(losses) / len(losses), correct / max(1, self.examples), first_bad)
        self.n = self.examples = 0
        return result


class GracefulStop:
    """Turns the first SIGTERM/SIGINT into a flag checked between steps (main thread only)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # second signal: give up on the graceful path
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over `loader`; one host sync at the end.

    Under torch.distributed every rank of the group must call it (with the same weights): the
    batches are dealt round-robin to the ranks (each batch whole, so every example's logits
    are computed exactly as in one process), per-batch sums are summed over ranks and added
    with `math.fsum`, and every rank returns the single-process result, bit for bit."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rank, world = distributed.rank(), distributed.group_size()
    rank = rank if world > 1 else 0
    n_batches = len(loader)
    loss_sums = torch.zeros(n_batches, device=device, dtype=torch.float64)
    correct = torch.zeros(n_batches, device=device, dtype=torch.int64)
    n = 0
    for b, (x, y) in enumerate(loader.epoch(0)):
        n += y.shape[0]
        if b % world != rank:
            continue
        out = model(x)
        loss_sums[b] = F.cross_entropy(out, y, reduction="sum")
        correct[b] = (out.argmax(1) == y).sum()
    model.train(was_training)
    if world > 1:
        distributed.all_reduce_sum_(loss_sums)
        distributed.all_reduce_sum_(correct)
    return math.fsum(loss_sums.tolist()) / max(1, n), int(correct.sum()) / max(1, n)


def _global_sizes(loader: Any, first: int, count: int) -> list[int] | None:
    """Examples in global batches first..first+count-1 of an epoch (all ranks together), from
    the loader's batch size and length; None for loaders that do not say."""
    bs, n = getattr(loader, "batch_size", None), getattr(loader, "num_examples", None)
    if not isinstance(bs, int) or not isinstance(n, int):
        return None
    return [max(0, min(bs, n - b * bs)) for b in range(first, first + count)]


def _no_sync(model: nn.Module, last_micro_batch: bool) -> Any:
    """DDP: skip the gradient all-reduce on all but the last micro-batch of a step."""
    if not last_micro_batch and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


@contextlib.contextmanager
def _epoch_bar(setup: TrainSetup, epoch: int, completed: int) -> Iterator[Any]:
    """A rich progress bar for one epoch (a no-op object when progress is off)."""
    if not setup.progress or setup.console is None:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn(f"epoch {epoch + 1}/{setup.epochs}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"),
        console=setup.console,
    )
    task = bar.add_task("train", total=len(setup.train_loader), completed=completed, stats="")
    with bar:
        yield (bar, task)


# --------------------------------------------------------------------------- the loop
def train(setup: TrainSetup, state: TrainState) -> TrainState:
    """Train from `state` (fresh or restored from a checkpoint) to the end; returns the state."""
    model, optimizer, ctl = setup.model, setup.optimizer, setup.controller
    writer, wandb = setup.writer, setup.wandb
    device = next(model.parameters()).device
    n_batches = len(setup.train_loader)
    accum = max(1, setup.accumulation)
    skip_nonfinite = setup.on_nonfinite_loss == "skip"
    # DDP (a model with `no_sync`) averages gradients over the ranks of the process group
    world = distributed.group_size() if hasattr(model, "no_sync") else 1
    reduce = distributed.all_reduce_sum_ if world > 1 else None
    window = _Window(max(1, min(setup.log_interval, n_batches)), device)
    started, wall_base = time.perf_counter(), state.wall_seconds
    saved_step = state.step or None  # a resumed run starts from a checkpoint of this step

    def elapsed() -> float:
        return wall_base + time.perf_counter() - started

    def flush(bar: Any = None) -> dict[str, Any] | None:
        """Read the device window (one sync); log a `train` line; raise on a non-finite loss."""
        read = window.read(reduce)
        if read is None:
            return None
        loss, acc, first_bad = read
        if first_bad is not None:
            kept = (
                f"kept the checkpoint of step {saved_step}"
                if saved_step
                else "no checkpoint was written"
            )
            raise TrainingDiverged(
                f"loss became non-finite at step {first_bad} (epoch {state.epoch + 1}); training "
                f"stopped, {kept}. Lower optimizer.lr, or set on_nonfinite_loss=skip"
            )
        record = {"step": state.step, "epoch": state.epoch, "loss": loss, "acc": acc}
        record.update(lr=optimizer.param_groups[0]["lr"], density=ctl.density())
        writer.log("train", **record)
        if wandb is not None:
            wandb.log({"train_loss": loss, "train_acc": acc, "lr": record["lr"]}, step=state.step)
        if bar is not None:
            bar[0].update(bar[1], stats=f"loss {loss:.4f} acc {acc:.4f}")
        return record

    def log_mask_updates() -> None:
        """Move the controller's new update records to metrics.jsonl (draining the list keeps
        a long run's memory flat; the file is the record)."""
        entries = list(ctl.update_log)
        del ctl.update_log[:]
        if entries and world > 1:  # identical by construction; verified (host work, at updates)
            distributed.check_identical("masks", ctl.masks, state.step)
        for entry in entries:
            writer.log("mask_update", **{**entry, "step": state.step, "epoch": state.epoch})
            if wandb is not None:
                wandb.log({"density": entry["density"]}, step=state.step)

    def checkpoint(epoch_file: int | None = None) -> Path | None:
        nonlocal saved_step
        flush()  # never checkpoint a diverged model
        state.wall_seconds = elapsed()
        path = setup.save_checkpoint(state, epoch_file)  # rank 0 writes, the others wait
        if world > 1:
            distributed.barrier()
        saved_step = state.step
        return path

    def stop_requested(stop: GracefulStop) -> bool:
        """A signal arrived (on any rank: all ranks then stop at this same step)."""
        asked = stop.signum is not None
        return distributed.any_flag(asked) if world > 1 else asked

    def interrupted(stop: GracefulStop) -> TrainingInterrupted:
        path = checkpoint()
        signum = stop.signum or signal.SIGTERM  # another rank got it
        name = signal.Signals(signum).name
        return TrainingInterrupted(
            f"interrupted by {name} at step {state.step} (epoch {state.epoch + 1}); "
            f"checkpoint saved {f'to {path}' if path else 'by rank 0'}; rerun the same command "
            "to resume",
            signum,
        )

    model.train()
    with GracefulStop() as stop:
        while state.epoch < setup.epochs:
            epoch = state.epoch
            batches = setup.train_loader.epoch(0 if setup.fixed_shuffle else epoch, state.batch)
            with _epoch_bar(setup, epoch, state.batch) as bar:
                while state.batch < n_batches:
                    # ---- one optimizer step over `group` micro-batches (this rank's shards)
                    group = min(accum, n_batches - state.batch)
                    sizes = _global_sizes(setup.train_loader, state.batch, group)
                    total = sum(sizes) if sizes else None  # the step's examples, all ranks
                    setup.schedule.apply(optimizer, state.step)
                    step_loss = torch.zeros((), device=device)
                    step_correct = torch.zeros((), device=device, dtype=torch.int64)
                    examples = 0
                    for i in range(group):
                        x, y = next(batches)
                        n = y.shape[0]
                        share = n / total if total else 1 / (group * world)  # of the step
                        with _no_sync(model, last_micro_batch=i == group - 1):
                            out = model(x)
                            if n:
                                loss = F.cross_entropy(
                                    out, y, label_smoothing=setup.label_smoothing
                                )
                            else:  # empty shard of a short last batch: still joins the all-reduce
                                loss = out.sum() * 0.0
                            (loss * (share * world)).backward()  # DDP divides by world
                        step_loss += loss.detach() * share
                        step_correct += (out.detach().argmax(1) == y).sum()
                        examples += n
                    state.batch += group
                    examples = total if total is not None else examples * world

                    finite = step_loss
                    if skip_nonfinite and reduce is not None:  # every rank must agree
                        finite = reduce(step_loss.clone())
                    stepped = not (skip_nonfinite and not bool(torch.isfinite(finite)))
                    if stepped:
                        window.add(state.step + 1, step_loss, step_correct, examples)
                        try:
                            ctl.step()  # optimizer.step() + masks + mask update when due
                        except Exception:
                            flush()  # a non-finite loss explains a failing step best
                            raise
                        state.step += 1
                        if ctl.update_log:
                            log_mask_updates()
                    else:  # on_nonfinite_loss=skip: drop the batch, no optimizer/LR/mask step
                        state.skipped_batches += group
                    optimizer.zero_grad(set_to_none=True)

                    # ---- logging, step checkpoints, signals (host work only here)
                    if bar is not None:
                        bar[0].advance(bar[1], group)
                    if stepped and state.step % setup.log_interval == 0:
                        flush(bar)
                    every = setup.ckpt_every_steps
                    if stepped and every and state.step % every == 0 and state.batch < n_batches:
                        checkpoint()  # (at an epoch's end the epoch-end logic decides)
                    if stop_requested(stop):
                        raise interrupted(stop)
                flush(bar)

            # ---- end of epoch: mask update (epoch_end methods), evaluation, checkpoint
            ctl.end_epoch()
            state.epoch, state.batch = epoch + 1, 0
            log_mask_updates()
            last = state.epoch == setup.epochs
            if state.epoch % setup.val_interval == 0 or last:
                state.last_eval = _evaluate_and_log(setup, state, elapsed())
            state.finished = last
            periodic = setup.ckpt_interval > 0 and state.epoch % setup.ckpt_interval == 0
            if periodic or last:
                checkpoint(epoch_file=state.epoch)
            if not last and stop_requested(stop):
                raise interrupted(stop)
    state.wall_seconds = elapsed()
    return state


def _evaluate_and_log(setup: TrainSetup, state: TrainState, wall: float) -> dict[str, Any]:
    val_loss = val_acc = None
    distributed.broadcast_buffers(unwrap(setup.model))  # BN statistics: rank 0's, as saved
    if setup.val_loader is not None:
        val_loss, val_acc = evaluate(setup.model, setup.val_loader)
    test_loss, test_acc = evaluate(setup.model, setup.test_loader)
    record = {
        "step": state.step,
        "epoch": state.epoch,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "wall_seconds": wall,
    }
    setup.writer.log("eval", **record)
    if setup.wandb is not None:
        metrics = {"test_loss": test_loss, "test_accuracy": test_acc}
        if val_acc is not None:
            metrics.update(val_loss=val_loss, val_accuracy=val_acc)
        setup.wandb.log(metrics, step=state.step)
    if setup.console is not None:
        val = f"val_acc {val_acc:.4f}  " if val_acc is not None else ""
        setup.console.print(
            f"epoch {state.epoch}/{setup.epochs}  step {state.step}  {val}"
            f"test_acc {test_acc:.4f}  test_loss {test_loss:.4f}  ({wall:.1f}s)",
            soft_wrap=True,
        )
    return record
