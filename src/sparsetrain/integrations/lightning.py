"""PyTorch Lightning integration: `SparsityCallback` sparse-trains a LightningModule.

    import lightning as L
    from sparsetrain.integrations.lightning import SparsityCallback

    trainer = L.Trainer(max_epochs=10, callbacks=[SparsityCallback("RigL", density=0.1)])
    trainer.fit(module)

The callback builds a `sparsetrain.SparsityController` (the same engine as `sparsetrain.sparsify`)
for the module and the optimizer Lightning configured, at `on_fit_start` — after
`configure_optimizers`, before the first batch. `total_steps` defaults to
`trainer.estimated_stepping_batches` (optimizer steps, so `accumulate_grad_batches` is counted
correctly) and `steps_per_epoch` to that divided by `max_epochs`.

Why a callback rather than the bare `sparsify(...)` line: Lightning runs the forward and backward
*inside* `optimizer.step(closure)`, so an optimizer step pre-hook would see the previous step's
gradients. The callback does the pre-step work (mask the gradients; capture the dense gradient
RigL grows from) in `on_before_optimizer_step` — after backward, after AMP unscaling, before
gradient clipping and the update, on every precision plugin and under DDP (gradients are already
all-reduced) — and the post-step work (re-apply the masks, count the step, update the masks when
due) in an optimizer step post-hook, which does not fire when AMP's `GradScaler` skips a step.
`end_epoch()` is called at `on_train_epoch_end` (for `apply_when="epoch_end"` methods).

The controller's state (masks, step counters, RNG) is saved into Lightning checkpoints under
`checkpoint["sparsetrain"]` and restored on `trainer.fit(..., ckpt_path=...)`: resuming keeps
the masks and the restored weights exactly.

Lightning is an optional dependency: `pip install "sparsetrain[lightning]"`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sparsetrain.controller import SparsityController
from sparsetrain.masks import maskable_parameters

try:  # `lightning` (>= 2.0) or the older standalone `pytorch_lightning` package
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError:  # pragma: no cover - exercised only without the `lightning` package
    try:
        from pytorch_lightning import Callback, LightningModule, Trainer
    except ImportError as exc:
        raise ImportError(
            "sparsetrain.integrations.lightning needs PyTorch Lightning: "
            'pip install "sparsetrain[lightning]" (or pip install "lightning>=2.1,<3")'
        ) from exc

__all__ = ["CHECKPOINT_KEY", "SparsityCallback"]

#: key of the controller state inside a Lightning checkpoint dict
CHECKPOINT_KEY = "sparsetrain"


def _unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside Lightning's `LightningOptimizer` wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


class SparsityCallback(Callback):
    """Sparse-train a LightningModule with any sparsetrain method.

    Args:
        method: a masking method (`"RigL"`, `"SET"`, `"SNFS"`, `"Static"`, `"Pruning"`, ...).
        density: target density of the masked weights (fraction kept, in (0, 1]).
        init: layer-wise distribution (`"ERK"`, `"ER"`, `"random"`); None = the method's default.
        total_steps: optimizer steps of the whole run; None = `trainer.estimated_stepping_batches`.
        steps_per_epoch: optimizer steps per epoch; None = total_steps / `trainer.max_epochs`.
        seed: seed of the controller's generator (initial masks, random growth).
        submodule: attribute of the LightningModule to sparsify (e.g. `"model"`); None = the
            whole module (every `nn.Conv2d` / `nn.Linear` weight in it).
        optimizer_index: which of `trainer.optimizers` steps those weights (default the first).
        **options: masking options of `sparsetrain.sparsify` (`prune_rate`, `interval`,
            `end_when`, `apply_when`, `decay_schedule`, `final_density`, ...).

    After `on_fit_start`, `callback.controller` is the live `SparsityController`
    (`.masks`, `.density()`, `.update_log`, ...).
    """

    def __init__(
        self,
        method: str = "RigL",
        density: float = 0.2,
        init: str | None = None,
        total_steps: int | None = None,
        steps_per_epoch: int | None = None,
        seed: int = 0,
        submodule: str | None = None,
        optimizer_index: int = 0,
        **options: Any,
    ) -> None:
        super().__init__()
        self.method = method
        self.density = density
        self.init = init
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.seed = seed
        self.submodule = submodule
        self.optimizer_index = optimizer_index
        self.options = options
        self.controller: SparsityController | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._post_hook: Any = None
        self._pending_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------ building
    def _target(self, pl_module: LightningModule) -> nn.Module:
        if self.submodule is None:
            return pl_module
        module = getattr(pl_module, self.submodule, None)
        if not isinstance(module, nn.Module):
            raise AttributeError(
                f"SparsityCallback(submodule={self.submodule!r}): "
                f"{type(pl_module).__name__} has no nn.Module attribute {self.submodule!r}"
            )
        return module

    def _schedule(self, trainer: Trainer) -> tuple[int | None, int | None]:
        total = self.total_steps
        if total is None:
            estimated = trainer.estimated_stepping_batches
            total = int(estimated) if math.isfinite(estimated) else None
        per_epoch = self.steps_per_epoch
        if (
            per_epoch is None
            and total is not None
            and trainer.max_epochs
            and trainer.max_epochs > 0
        ):
            per_epoch = max(1, total // trainer.max_epochs)
        return total, per_epoch

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Build the controller for the module and its optimizer (restoring a loaded state)."""
        if not trainer.optimizers:
            raise RuntimeError("SparsityCallback: configure_optimizers returned no optimizer")
        optimizer = _unwrap_optimizer(trainer.optimizers[self.optimizer_index])
        model = self._target(pl_module)
        state = self._pending_state
        if state is None and self.controller is not None:  # a second fit() with this callback
            state = self.controller.state_dict()
        self._remove_hooks()
        # Building a controller draws fresh masks and zeroes weights outside them; when a state
        # is about to be loaded the module already holds restored weights: keep them.
        saved = (
            {n: p.detach().clone() for n, p in maskable_parameters(model).items()}
            if state is not None
            else None
        )
        total, per_epoch = self._schedule(trainer)
        ctl = SparsityController(
            model,
            optimizer,
            self.method,
            self.density,
            self.init,
            total,
            steps_per_epoch=per_epoch,
            seed=self.seed,
            attach=False,  # the pre-step work runs in on_before_optimizer_step, see module doc
            **self.options,
        )
        if state is not None and saved is not None:
            ctl.load_state_dict(state)
            with torch.no_grad():
                for name, param in maskable_parameters(model).items():
                    param.copy_(saved[name])
            ctl.apply_masks()
        self._pending_state = None
        self.controller = ctl
        self._optimizer = optimizer
        self._post_hook = optimizer.register_step_post_hook(lambda *_: ctl.after_optimizer_step())

    def _remove_hooks(self) -> None:
        if self._post_hook is not None:
            self._post_hook.remove()
            self._post_hook = None

    # ------------------------------------------------------------------ training
    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Any
    ) -> None:
        """After backward (and AMP unscaling), before clipping and the step: mask gradients,
        capture RigL's grow score when an update is due."""
        if self.controller is not None and _unwrap_optimizer(optimizer) is self._optimizer:
            self.controller.before_optimizer_step()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """`controller.end_epoch()`: mask updates of `apply_when="epoch_end"` methods."""
        if self.controller is not None:
            self.controller.end_epoch()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Remove the optimizer hook; the controller stays readable (masks, update_log)."""
        self._remove_hooks()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        """Remove the optimizer hook when fitting fails."""
        self._remove_hooks()

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Store the controller state under `checkpoint["sparsetrain"]`."""
        if self.controller is not None:
            checkpoint[CHECKPOINT_KEY] = self.controller.state_dict()

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Restore the controller state (at `on_fit_start` if the controller is not built yet)."""
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            return
        if self.controller is None:
            self._pending_state = state  # loaded in on_fit_start, once the optimizer exists
        else:  # strategies that restore after setup: the weights are already the restored ones
            self.controller.load_state_dict(state)
