"""`SparsityController`: the one owner of mutable sparse state, and `sparsify`, its 3-line API.

    ctl = sparsify(model, optimizer, method="RigL", density=0.2, init="ERK", total_steps=T)
    loss.backward()
    ctl.step()            # == optimizer.step(): the controller rides on optimizer step hooks

The controller attaches to the optimizer with `register_step_pre_hook` / `register_step_post_hook`,
so a loop that keeps calling `optimizer.step()` (or `GradScaler.step(optimizer)`, or Lightning)
is sparsified too; a step skipped by AMP skips the mask work. Per ordinary step it does one
batched in-place multiply of the gradients by the masks and no host sync; the weights need no
re-masking after SGD / Adam / AdamW steps (see `_remask_after_step`), other optimizers and
dense-gradient methods get a second multiply. Mask updates (host work allowed) happen every
`interval` steps (`apply_when=step_end`) or epochs (`apply_when=epoch_end`, via `end_epoch()`)
while `start_when <= t < end_when`; they work on the indices of the active weights, so their
cost grows with the active weights plus one pass over each layer's grow scores.

Performance is measured by `make bench` (benchmarks/results.md).

Determinism: masks are drawn from the controller's own `torch.Generator` (seeded, CPU), random
grows draw from the same generator, and selection ties go to the lower flat index, so the
same seed gives the same masks on any number of ranks (DDP all-reduces gradients before the
optimizer step, so gradient and momentum scores are identical on every rank too).
"""

from __future__ import annotations

import math
import os
import types
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from sparsetrain import openmp, optim_state
from sparsetrain.algorithms.dst import (
    drop_lowest,
    grow_highest_units,
    grow_random_units,
    redistribute,
)
from sparsetrain.algorithms.pruning import global_magnitude_keep
from sparsetrain.algorithms.registry import METHODS, MethodSpec
from sparsetrain.distributions import (
    LayerShape,
    canonical_init,
    check_density,
    is_structured,
    layer_budgets,
)
from sparsetrain.errors import CheckpointError, ConfigError, choices_message
from sparsetrain.masks import group_size, maskable_parameters, rescale_to_fan_in, unwrap
from sparsetrain.ops import (
    CSRPattern,
    apply_index_changes,
    csr_linear,
    drop_lowest_abs,
    expand_groups,
    group_scores,
    mean_abs_at,
    random_seed,
    stream_seeds,
    without,
)
from sparsetrain.schedules import (
    DECAY_SCHEDULES,
    is_update_step,
    resolve_tick,
    update_fraction,
    zhu_gupta_density,
)

GROWTH_MODES = ("absolute-gradient", "momentum", "random", "none")
PRUNE_MODES = ("magnitude", "global-magnitude")
REDISTRIBUTION_MODES = ("none", "momentum")
APPLY_WHEN = ("step_end", "epoch_end")
#: `sparse_kernels=True`: a Linear layer trains on CSR kernels at or below this density when it
#: has at least CSR_MIN_NUMEL weights. Measured break-even (benchmarks/results.md) is between
#: 0.05 and 0.1 and moves with the machine (MLP end to end at 0.1: 0.93x of a dense step on one,
#: 1.18x on another; at 0.05 a win on both), so the cut is 0.05.
CSR_MAX_DENSITY = 0.05
CSR_MIN_NUMEL = 1 << 16
#: reference config keys accepted (and ignored here) so a masking config can be passed whole
PASSIVE_KEYS = (
    "name",
    "density",
    "sparse_init",
    "dense",
    "init_exp_name",
    "override_dir",
    "print_FLOPs",
)


@dataclass(frozen=True)
class MaskingOptions:
    """The reference system's masking options (field names as in its configs)."""

    prune_rate: float = 0.3
    interval: int = 100
    start_when: float = 0
    end_when: float = 0.75
    apply_when: str = "step_end"
    decay_schedule: str = "cosine"
    growth_mode: str = "none"
    prune_mode: str = "magnitude"
    redistribution_mode: str = "none"
    dense_gradients: bool = False
    final_density: float | None = None
    lottery_mask_path: str | None = None
    sparse_kernels: bool = False  # (ours) Linear layers at density <= CSR_MAX_DENSITY on CSR
    scale_init: bool = False  # (ours) rescale initial weights to each unit's sparse fan-in

    @classmethod
    def resolve(cls, spec: MethodSpec, options: dict[str, Any]) -> MaskingOptions:
        """The method's defaults overridden by `options` (None values ignored), validated.

        Unknown keys raise `ConfigError` listing the valid ones; the reference config's
        passive keys (`name`, `density`, `sparse_init`, ...) are accepted and ignored.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known - set(PASSIVE_KEYS))
        if unknown:
            raise ConfigError(
                f"unknown masking option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(known))}"
            )
        values = {k: v for k, v in spec.defaults.items() if k in known}
        values.update({k: v for k, v in options.items() if k in known and v is not None})
        opts = cls(**values)
        opts.validate(spec)
        return opts

    def validate(self, spec: MethodSpec) -> None:
        """Raise `ConfigError` naming the valid choices for any out-of-range option."""
        for value, name, valid in (
            (self.growth_mode, "growth_mode", GROWTH_MODES),
            (self.prune_mode, "prune_mode", PRUNE_MODES),
            (self.redistribution_mode, "redistribution_mode", REDISTRIBUTION_MODES),
            (self.apply_when, "apply_when", APPLY_WHEN),
            (self.decay_schedule, "decay_schedule", DECAY_SCHEDULES),
        ):
            if value not in valid:
                raise ConfigError(choices_message(name, value, valid))
        if self.interval <= 0:
            raise ConfigError(
                f"interval must be a positive number of steps/epochs, got {self.interval}"
            )
        if not 0 <= self.prune_rate <= 1:
            raise ConfigError(f"prune_rate (α) must be in [0, 1], got {self.prune_rate}")
        if spec.pruning and self.final_density is None:
            raise ConfigError("Pruning needs final_density (the density training ends at)")


def _units_view(tensor: torch.Tensor, group: int) -> torch.Tensor:
    """One row per unit (a k×k kernel when structured), or flat: index along dim 0."""
    return tensor.view(-1) if group == 1 else tensor.view(-1, group)


def _as_factor(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask as a 0/1 multiplier: the same bytes viewed as uint8. `x.mul_(bool)` takes a
    slow dtype-conversion path on CPU; `x.mul_(uint8)` is vectorised (~5x faster), same result."""
    return mask.view(torch.uint8)


class _Factors:
    """The masks as the multipliers of the every-step gradient masking.

    On CPU a float multiplier makes `grad *= factor` a pure float multiply, ~1.8x faster than
    float × uint8 (it is most of a masked step's overhead), for 4 bytes per masked weight; it is
    rebuilt whenever a mask is replaced or edited (tensor identity and version). On GPUs, where
    memory is scarcer and the multiply is bandwidth-bound, it is the mask's own bytes (uint8)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[torch.Tensor, int, torch.Tensor]] = {}

    def __call__(self, name: str, mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if mask.device.type != "cpu" or not like.is_floating_point():
            return _as_factor(mask)
        cached = self._cache.get(name)
        if cached is None or cached[0] is not mask or cached[1] != mask._version:
            factor = mask.to(like.dtype)
            cached = self._cache[name] = (mask, mask._version, factor)
        return cached[2] if cached[2].dtype == like.dtype else _as_factor(mask)

    def cached(self, name: str, mask: torch.Tensor) -> torch.Tensor | None:
        """The float copy of `mask` if one is cached and current (to patch in place)."""
        entry = self._cache.get(name)
        if entry is None or entry[0] is not mask or entry[1] != mask._version:
            return None
        return entry[2]

    def moved(self, name: str, old: torch.Tensor, new: torch.Tensor) -> None:
        """The float copy of `old`, already patched to `new`, now stands for `new`."""
        entry = self._cache.get(name)
        if entry is not None and entry[0] is old:
            self._cache[name] = (new, new._version, entry[2])

    def changed(
        self, name: str, mask: torch.Tensor, off: torch.Tensor, on: torch.Tensor, group: int
    ) -> None:
        """`mask` replaces the layer's mask, differing from the old one at the `off` and `on`
        unit indices: the float copy is patched there (O(changes), not a full conversion)."""
        cached = self._cache.get(name)
        if cached is not None:
            units = _units_view(cached[2], group)
            units.index_fill_(0, off, 0).index_fill_(0, on, 1)
            self._cache[name] = (mask, mask._version, cached[2])


@dataclass
class _Layer:
    """Book-keeping for one masked weight."""

    name: str
    param: nn.Parameter
    group: int  # entries switching together (k*k when structured)
    budget: int  # active entries, an exact integer decided at init (changed only by the method)
    frozen_dense: bool  # initial budget is the whole layer: never churned (except by Pruning)


class SparsityController:
    """Owns masks, step counters, schedule position and RNG; `state_dict()` round-trips them.

    Usually built by `sparsify`. The state is plain tensors and numbers (checkpoint-safe with
    `torch.load(..., weights_only=True)`) and restores masks, counters and RNG exactly.

    Examples:
        >>> import torch
        >>> def make(seed):
        ...     net = torch.nn.Linear(10, 10)
        ...     opt = torch.optim.SGD(net.parameters(), lr=0.1)
        ...     return SparsityController(net, opt, "RigL", 0.3, "random", total_steps=10, seed=seed)
        >>> a, b = make(seed=0), make(seed=1)
        >>> int(a.masks["weight"].sum()), torch.equal(a.masks["weight"], b.masks["weight"])
        (30, False)
        >>> b.load_state_dict(a.state_dict())
        >>> torch.equal(a.masks["weight"], b.masks["weight"])
        True
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        method: str = "RigL",
        density: float = 0.2,
        init: str | None = None,
        total_steps: int | None = None,
        steps_per_epoch: int | None = None,
        seed: int = 0,
        attach: bool = True,
        **options: Any,
    ):
        self.spec: MethodSpec = METHODS.get(method)
        if self.spec.pruning and options.get("final_density") is None:
            # library shorthand: sparsify(..., method="Pruning", density=d) prunes 1.0 -> d
            options = {**options, "final_density": density}
            density = 1.0
        self.model = unwrap(model)
        self.optimizer = optimizer
        optim_state.check_supported(optimizer)
        self.options = MaskingOptions.resolve(self.spec, options)
        self.density_target = 1.0 if self.spec.dense_model else check_density(density)
        # Lottery / RigL_reinit always take their masks from the source run's checkpoint
        self.init = (
            "lottery"
            if self.spec.init_from_checkpoint
            else canonical_init(init or self.spec.default_init)
        )
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.generator = torch.Generator().manual_seed(int(seed))
        self.step_count = 0
        self.epoch_count = 0
        self.dense_grad_steps = 0
        self.update_log: list[dict[str, Any]] = []
        self.flops = None
        self._grad_scores: dict[str, torch.Tensor] = {}
        self._capture_buffers: dict[str, torch.Tensor] = {}
        self._dense_grad_now = False
        self._factor = _Factors()
        self._hooks: list[Any] = []
        self._csr: dict[str, tuple[nn.Linear, torch.Tensor, CSRPattern]] = {}
        # caches, rebuilt from the masks whenever those are replaced wholesale:
        # flat indices of active units: runs of ascending indices, so gathers walk memory forwards
        self._active: dict[str, torch.Tensor] = {}
        self._ever_count: dict[str, int] = {}  # active entries of ever_active
        self._check_schedule()
        self.layers: dict[str, _Layer] = {}
        self._sparse: list[_Layer] = []
        self.masks: dict[str, torch.Tensor] = {}
        self.ever_active: dict[str, torch.Tensor] = {}
        if self.options.redistribution_mode != "none" and is_structured(self.init):
            raise ConfigError(
                "redistribution_mode=momentum cannot keep exact budgets with structured masks "
                "(layers switch kernels of different sizes); use redistribution_mode=none"
            )
        if not self.spec.dense_model:
            self._init_masks(options.get("lottery_mask_path") or self.options.lottery_mask_path)
            if self.options.scale_init and not self.spec.rewind_weights:  # Lottery: exact rewind
                for name, layer in self.layers.items():
                    rescale_to_fan_in(layer.param, self.masks[name])
        self._refresh_sparse_layers()
        if attach:
            self.attach()

    # ------------------------------------------------------------------ setup
    def _ticks_total(self) -> int | None:
        if self.options.apply_when == "step_end":
            return self.total_steps
        if self.total_steps is not None and self.steps_per_epoch:
            return math.ceil(self.total_steps / self.steps_per_epoch)
        return None

    def _check_schedule(self) -> None:
        opts, total = self.options, self._ticks_total()
        if self.spec.pruning and self.options.final_density is not None:
            check_density(self.options.final_density, "final_density")
            if self.options.final_density > self.density_target:
                raise ConfigError(
                    f"final_density ({self.options.final_density}) is above the starting density "
                    f"({self.density_target}): pruning only removes weights"
                )

        unit = "steps" if opts.apply_when == "step_end" else "epochs"
        self.start = max(0, resolve_tick(opts.start_when, total, "start_when"))
        self.end = resolve_tick(opts.end_when, total, "end_when")
        if self.spec.dense_model or (opts.growth_mode == "none" and not self.spec.pruning):
            self.end = -1
            return
        if total is not None and self.end > total:
            raise ConfigError(
                f"end_when={opts.end_when} is beyond training ({total} {unit}); "
                f"use a value <= {total} or a fraction in (0, 1)"
            )
        if self.end != -1 and self.start >= self.end:
            raise ConfigError(
                f"start_when ({self.start}) must be before end_when ({self.end}) {unit}"
            )

    def _init_masks(self, lottery_path: str | None) -> None:
        params = maskable_parameters(self.model)
        if self.init == "lottery":
            masks = self._load_lottery(lottery_path, params)
            budgets = {n: int(m.sum()) for n, m in masks.items()}
            structured = False
        else:
            structured = is_structured(self.init)
            shapes = {n: LayerShape(tuple(p.shape), p.dim() == 4) for n, p in params.items()}
            start_density = self.density_target
            budgets = layer_budgets(shapes, start_density, self.init)
            masks = {}
            for name, p in params.items():
                group = group_size(p.shape, structured)
                units = p.numel() // group
                chosen = torch.randperm(units, generator=self.generator)[: budgets[name] // group]
                unit_mask = torch.zeros(units, dtype=torch.bool)
                unit_mask[chosen] = True
                if group > 1:
                    unit_mask = unit_mask.reshape(-1, 1).expand(-1, group)
                masks[name] = unit_mask.reshape(p.shape).to(p.device)
        for name, p in params.items():
            group = group_size(p.shape, structured)
            budget = budgets[name]
            self.layers[name] = _Layer(name, p, group, budget, frozen_dense=budget == p.numel())
            self.masks[name] = masks[name]
            self.ever_active[name] = masks[name].clone()
        self._masks_replaced()

    def _load_lottery(
        self, path: str | None, params: dict[str, nn.Parameter]
    ) -> dict[str, torch.Tensor]:
        source = "a Pruning run (masking=Pruning)" if self.spec.rewind_weights else "a RigL run"
        if not path:
            raise ConfigError(
                f"{self.spec.name} needs lottery_mask_path: the final checkpoint of {source}"
            )
        if os.path.isdir(path):
            path = os.path.join(path, "ckpts", "last.pt")
        if not os.path.exists(path):
            raise ConfigError(
                f"lottery mask checkpoint not found: {path}; it is written by {source} — "
                "train that run first (its ckpts/last.pt), or point masking.lottery_mask_path at it"
            )
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt or foreign file
            raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
        if isinstance(ckpt.get("sparsity"), dict) and ckpt["sparsity"].get("masks"):
            masks = dict(ckpt["sparsity"]["masks"])
        elif isinstance(ckpt.get("model"), dict):
            masks = {n: ckpt["model"][n] != 0 for n in params if n in ckpt["model"]}
        else:
            raise CheckpointError(f"{path} holds no masks (no 'sparsity' or 'model' entry)")
        for name, p in params.items():
            if name not in masks or tuple(masks[name].shape) != tuple(p.shape):
                raise CheckpointError(
                    f"checkpoint {path} does not match this model: layer {name} "
                    f"{'missing' if name not in masks else f'has shape {tuple(masks[name].shape)}'}, "
                    f"model has {tuple(p.shape)}"
                )
        if self.spec.rewind_weights:
            init_weights = ckpt.get("init_model")
            if not isinstance(init_weights, dict):
                raise CheckpointError(f"{path} has no step-0 weights ('init_model') to rewind to")
            self.model.load_state_dict(init_weights)
        return {n: masks[n].to(device=p.device, dtype=torch.bool) for n, p in params.items()}

    def _masks_replaced(self) -> None:
        """After masks are set wholesale (init, resume, pruning): re-establish the invariant
        the step path relies on — masked weights are 0 and, unless gradients are dense, so is
        their optimizer state — and drop the caches derived from the masks."""
        self._active.clear()
        self._ever_count.clear()
        self._refresh_sparse_layers()
        self.apply_masks()
        if not self.options.dense_gradients:
            for layer in self._sparse:
                optim_state.keep_entries(self.optimizer, layer.param, self.masks[layer.name])

    @property
    def _remask_after_step(self) -> bool:
        """Whether weights need re-masking after each optimizer step.

        Not with masked gradients and SGD / Adam / AdamW: a weight that is 0, with gradient 0
        and optimizer state 0 (kept so by `_masks_replaced` and the updates), stays exactly 0
        through their step, weight decay and momentum included. Dense-gradient methods (SNFS)
        and other optimizer types (subclasses may change the step) re-mask every step."""
        return self.options.dense_gradients or type(self.optimizer) not in optim_state.STATE_KEYS

    def _refresh_sparse_layers(self) -> None:
        """Layers whose mask is not all-ones: the only ones touched on ordinary steps."""
        self._sparse = [
            layer for layer in self.layers.values() if layer.budget < layer.param.numel()
        ]
        if self.options.sparse_kernels:
            self._refresh_csr()
        if self.flops is not None:
            self.flops.on_masks_changed(self.layer_densities())

    def _refresh_csr(self) -> None:
        """`sparse_kernels`: route sparse-enough Linear layers through `csr_linear`, with a CSR
        pattern rebuilt whenever the layer's mask changed (host work, at updates only)."""
        linears = {
            f"{n}.weight": m for n, m in self.model.named_modules() if isinstance(m, nn.Linear)
        }
        for name, layer in self.layers.items():
            module = linears.get(name)
            if module is None:
                continue
            numel = layer.param.numel()
            if layer.budget <= CSR_MAX_DENSITY * numel and numel >= CSR_MIN_NUMEL:
                mask = self.masks[name]
                if name not in self._csr or self._csr[name][1] is not mask:
                    self._csr[name] = (module, mask, CSRPattern(mask))
                # an instance attribute shadows Linear.forward for this module only; bound to
                # the module, so a deep copy of the model computes with the copy's weights
                module.forward = types.MethodType(
                    lambda mod, x, _name=name: self._csr_forward(mod, _name, x), module
                )
            elif name in self._csr:
                del self._csr[name]
                del module.forward  # back to Linear.forward

    def _csr_forward(self, module: nn.Linear, name: str, x: torch.Tensor) -> torch.Tensor:
        pattern = self._csr[name][2]
        if x.dtype != module.weight.dtype:  # e.g. under autocast: the dense kernel
            return nn.functional.linear(x, module.weight, module.bias)
        # the gradient of this forward is used at step count + 1: dense if that step needs it
        dense_grad = self.options.dense_gradients or self._needs_grad_scores(self.step_count + 1)
        return csr_linear(x, module.weight, module.bias, pattern, dense_grad)

    # ------------------------------------------------------------------ hooks
    def attach(self) -> None:
        """Ride on the optimizer: mask gradients before its step, weights and updates after."""
        if not self._hooks:
            self._hooks = [
                self.optimizer.register_step_pre_hook(self._pre_step_hook),
                self.optimizer.register_step_post_hook(lambda *_: self.after_optimizer_step()),
            ]

    def _pre_step_hook(self, optimizer: Any, args: tuple, kwargs: dict) -> Any:
        """Mask gradients before the optimizer uses them. With `optimizer.step(closure)` (as
        Lightning calls it) backward runs inside the step, so the masking runs right after
        the closure instead of now, when the gradients are still the previous step's."""
        # `args` starts with the optimizer itself (torch passes the wrapped method's arguments)
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is None:
            self.before_optimizer_step()
            return None

        def closure_then_mask() -> Any:
            loss = closure()
            self.before_optimizer_step()
            return loss

        return args[:1], {**kwargs, "closure": closure_then_mask}

    def detach(self) -> None:
        """Remove the optimizer hooks; `step()` then does the masking work itself."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def attach_flops(self, accountant: Any) -> None:
        """Feed a FLOPs accountant: `on_masks_changed` now and after updates, `on_step` per step."""
        self.flops = accountant
        accountant.on_masks_changed(self.layer_densities())

    def step(self) -> None:
        """Optimizer step + mask re-application + mask update when due (via the hooks)."""
        if not self._hooks:
            self.before_optimizer_step()
            self.optimizer.step()
            self.after_optimizer_step()
        else:
            self.optimizer.step()

    def _needs_grad_scores(self, tick: int) -> bool:
        if self.options.growth_mode != "absolute-gradient":
            return False
        if self.options.apply_when == "epoch_end":  # keep the latest gradient through the epoch
            return self._due(self.epoch_count + 1)
        return self._due(tick)

    def before_optimizer_step(self) -> None:
        """Mask the gradients (capturing RigL's dense grow score first when an update is due).

        Runs from the optimizer's pre-step hook. Public for integrations that own the step
        (`detach()` first): call it after backward and before the update, e.g. Lightning's
        `on_before_optimizer_step`, after AMP unscaling and before gradient clipping."""
        tick = self.step_count + 1
        capture = self._needs_grad_scores(tick)
        self._dense_grad_now = capture or self.options.dense_gradients
        masked_here = set()
        if capture:
            self._grad_scores = {}
            sparse = {layer.name for layer in self._sparse}
            for layer in self._dynamic():
                grad = layer.param.grad
                if grad is None:
                    continue
                if not self.options.dense_gradients and layer.name in sparse:
                    # the dense gradient itself is the grow score and the optimizer gets a
                    # masked copy: one pass, instead of a copy and an in-place multiply
                    layer.param.grad = self._masked_copy(layer.name, grad)
                    masked_here.add(layer.name)
                    self._grad_scores[layer.name] = grad.detach()
                else:
                    self._grad_scores[layer.name] = grad.detach().clone()
        if not self.options.dense_gradients:
            with_grad = [
                layer
                for layer in self._sparse
                if layer.param.grad is not None and layer.name not in masked_here
            ]
            if with_grad:
                torch._foreach_mul_(
                    [layer.param.grad for layer in with_grad],
                    [
                        self._factor(layer.name, self.masks[layer.name], layer.param.grad)
                        for layer in with_grad
                    ],
                )

    def _masked_copy(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        """grad × mask, for the optimizer while `grad` itself stays RigL's grow score.

        On CPU the copy goes into a buffer kept from one update to the next: a fresh tensor
        this large is a fresh mapping from the OS on every update step (glibc unmaps large
        freed blocks), and its ~700 page faults cost ~8 % of an MLP update. CUDA's caching
        allocator reuses its blocks, so GPUs keep no buffer."""
        factor = self._factor(name, self.masks[name], grad)
        if grad.device.type != "cpu":
            return grad * factor
        buffer = self._capture_buffers.get(name)
        if (
            buffer is None
            or buffer.shape != grad.shape
            or buffer.dtype != grad.dtype
            or buffer.data_ptr() == grad.data_ptr()  # zero_grad(set_to_none=False) kept it
        ):
            buffer = self._capture_buffers[name] = torch.empty_like(grad)
        return torch.mul(grad, factor, out=buffer)

    def after_optimizer_step(self) -> None:
        """Re-mask if the optimizer needs it, count the step, update the masks when due.

        Runs from the optimizer's post-step hook (public for integrations, as above); call it
        only for steps the optimizer really took (not the ones AMP's GradScaler skips)."""
        if self._remask_after_step:
            self.apply_masks()
        self.step_count += 1
        if self._dense_grad_now:
            self.dense_grad_steps += 1
        if self.flops is not None:
            self.flops.on_step(dense_grad=self._dense_grad_now)
        if self.options.apply_when == "step_end" and self._due(self.step_count):
            self._update(self.step_count)
            self._grad_scores = {}

    def end_epoch(self) -> None:
        """Call once at the end of every epoch (mask updates with `apply_when=epoch_end`)."""
        self.epoch_count += 1
        if self.options.apply_when == "epoch_end" and self._due(self.epoch_count):
            self._update(self.epoch_count)
            self._grad_scores = {}

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero every masked weight in place."""
        if self._sparse:
            torch._foreach_mul_(
                [layer.param.data for layer in self._sparse],
                [
                    self._factor(layer.name, self.masks[layer.name], layer.param)
                    for layer in self._sparse
                ],
            )

    # ------------------------------------------------------------------ updates
    def _due(self, tick: int) -> bool:
        if self.end == -1:
            return False
        if self.spec.pruning:
            on_grid = tick >= self.start and (tick - self.start) % self.options.interval == 0
            return (on_grid and tick <= self.end) or tick == self.end
        return is_update_step(tick, self.start, self.end, self.options.interval)

    def _dynamic(self) -> list[_Layer]:
        return [layer for layer in self.layers.values() if not layer.frozen_dense]

    @torch.no_grad()
    def _update(self, tick: int) -> None:
        before = dict(self.masks)  # updates build new mask tensors; masks are never edited in place
        if self.spec.pruning:
            alpha = None
            changed = self._commit(self._prune(tick), before)
        else:
            alpha = update_fraction(
                tick, self.options.prune_rate, self.end, self.options.decay_schedule
            )
            changed = self._drop_and_grow(alpha)
        self._log_update(tick, alpha, changed)

    def _prune(self, tick: int) -> dict[str, torch.Tensor]:
        density = zhu_gupta_density(
            tick, self.density_target, self.options.final_density, self.start, self.end
        )
        layers = list(self.layers.values())
        keep = round(density * sum(layer.param.numel() for layer in layers))
        return global_magnitude_keep(
            {layer.name: layer.param for layer in layers},
            {layer.name: self.masks[layer.name] for layer in layers},
            keep,
        )

    def _grow_score(self, layer: _Layer) -> torch.Tensor:
        """The signed grow score (gradient or momentum): growth ranks its absolute value."""
        mode = self.options.growth_mode
        if mode == "absolute-gradient":
            score = self._grad_scores.get(layer.name)
            if score is None:
                raise ConfigError(
                    f"growth_mode=absolute-gradient found no gradient for {layer.name} at the update"
                )
            return score
        buffer = optim_state.momentum(self.optimizer, layer.param)
        if buffer is None:
            raise ConfigError(
                "growth_mode=momentum needs an optimizer with momentum (SGD momentum > 0, or Adam)"
            )
        return buffer

    def _active_units(self, layer: _Layer) -> torch.Tensor:
        """Flat indices of the layer's active units (weights, or kernels when structured)."""
        if layer.name not in self._active:
            units = self.masks[layer.name].reshape(-1, layer.group)[:, 0]
            self._active[layer.name] = units.nonzero().squeeze(1)
        return self._active[layer.name]

    def _drop_and_grow(self, alpha: float) -> int:
        """One drop-and-grow update; returns the number of new connections.

        Works on unit indices (`algorithms.dst` index form): the drop looks at the active
        units only, the grow makes one pass over the layer's scores. Layers are independent
        apart from SNFS's redistribution, which needs only each layer's drop count, kept
        count and mean |momentum| over its active units, all known before any drop; on CPU
        each flat layer's drop, grow and commit is one job, and the layers' jobs run side by
        side on PyTorch's OpenMP threads (`sparsetrain.openmp`), the same selections as one
        at a time; when every layer is a job, the jobs also take the momentum scores and
        the redistribution, in the same call."""
        layers = self._dynamic()
        drops = {layer.name: round(alpha * self._active_units(layer).numel()) for layer in layers}
        if self.options.redistribution_mode != "momentum" or not layers:
            return self._update_layers(layers, drops, drops)
        momenta = {
            layer.name: optim_state.momentum(self.optimizer, layer.param) for layer in layers
        }
        if self._job_layers(layers) == layers and all(
            m is None or (openmp.usable(m) and m.is_contiguous()) for m in momenta.values()
        ):
            return self._update_layers(layers, drops, None, momenta)
        capacity = {
            layer.name: layer.param.numel() // layer.group
            - (self._active_units(layer).numel() - self._dropped_count(layer, drops))
            for layer in layers
        }
        scores = self._momentum_scores(layers, momenta)
        return self._update_layers(
            layers, drops, redistribute(sum(drops.values()), scores, capacity)
        )

    def _dropped_count(self, layer: _Layer, drops: dict[str, int]) -> int:
        """How many units the drop of `drops[layer.name]` really removes (0 to all active)."""
        return min(max(drops[layer.name], 0), self._active_units(layer).numel())

    def _momentum_scores(
        self, layers: list[_Layer], momenta: dict[str, torch.Tensor | None]
    ) -> dict[str, float]:
        """SNFS's layer scores: the mean |momentum| over each layer's active units (0 without
        momentum yet, or without active units); a gather of the cached active indices."""
        scores = {}
        for layer in layers:
            buffer, active = momenta[layer.name], self._active_units(layer)  # group 1: flat
            empty = buffer is None or not active.numel()
            scores[layer.name] = 0.0 if empty else mean_abs_at(buffer.reshape(-1), active)
        return scores

    def _update_layers(
        self,
        layers: list[_Layer],
        drops: dict[str, int],
        grows: dict[str, int] | None,
        momenta: dict[str, torch.Tensor | None] | None = None,
    ) -> int:
        """Drop `drops[name]` units of each layer and grow `grows[name]`: the job layers
        (`_job_layers`) in one team call, the others one at a time; returns the number of
        new connections. `grows` None: every layer is a job, and the jobs redistribute the
        regrowth by the mean |`momenta`| over the active units."""
        teamed = self._job_layers(layers)
        created, jobs = 0, []
        for layer, seed in zip(layers, self._growth_seeds(layers)):
            k = None if grows is None else grows[layer.name]
            if layer in teamed:
                n_kept = self._active_units(layer).numel() - self._dropped_count(layer, drops)
                job = self._commit_job(layer, k, n_kept, seed)
                job["index"], job["drop"] = self._active_units(layer), drops[layer.name]
                if momenta is not None:
                    job["momentum"] = momenta[layer.name]
                jobs.append((layer, job))
                continue
            dropped, kept = self._drop(layer, drops[layer.name])
            created += self._grow_and_commit_one(layer, dropped, kept, k, seed)
        total = None if grows is not None else sum(drops.values())
        results = openmp.drop_and_commit_layers([job for _, job in jobs], total)
        for (layer, job), (dropped, kept, *changes) in zip(jobs, results):
            created += self._install_job(layer, job, dropped, kept, changes)
        return created

    def _job_layers(self, layers: list[_Layer]) -> list[_Layer]:
        """The layers whose grow and commit run as `sparsetrain.openmp` jobs (`_teamed`, with
        contiguous masks and a float32 CPU grow score)."""
        random = self.options.growth_mode == "random"
        return self._teamed(
            layers,
            lambda layer: layer.param,
            lambda layer: (
                layer.param.is_contiguous()
                and self.masks[layer.name].is_contiguous()
                and self.ever_active[layer.name].is_contiguous()
                and (random or openmp.usable(self._grow_score(layer)))
            ),
        )

    def _growth_seeds(self, layers: list[_Layer]) -> list[int | None]:
        """Random growth: each layer's seed for its draws, all from one number of the
        generator (`ops.stream_seeds`); else None for each."""
        if self.options.growth_mode != "random" or not layers:
            return [None] * len(layers)
        return stream_seeds(random_seed(self.generator), len(layers))

    def _commit_job(self, layer: _Layer, k: int | None, n_kept: int, seed: int | None) -> dict:
        """A flat layer's grow of k units (None: decided by the jobs' redistribution) and its
        commit as a job for `sparsetrain.openmp` (without the drop's units: the caller adds
        them), `n_kept` units kept by the drop, `seed` for random growth."""
        name, before = layer.name, self.masks[layer.name].reshape(-1)
        job = {
            "before": before,
            "k": k,
            "n_cand": before.numel() - n_kept,
            "ever": self.ever_active[name].reshape(-1),
            "weight": layer.param.detach().reshape(-1),
            "states": optim_state.state_tensors(self.optimizer, layer.param),
            "reset_fresh": self.options.dense_gradients,
            "factor": self._factor.cached(name, self.masks[name]),
        }
        if seed is None:
            job["scores"] = self._grow_score(layer)
        elif k is None or 0 < k < job["n_cand"]:  # else none, or every candidate, is grown
            job["seed"] = seed
        return job

    def _install_job(
        self, layer: _Layer, job: dict, dropped: torch.Tensor, kept: torch.Tensor, changes: list
    ) -> int:
        """`_commit_layer` for a layer the job committed (`changes`: the commit part of
        `openmp.drop_and_commit_layers`' result); returns its new connections."""
        after, grown, gone, fresh, new_to_ever, active = changes
        torch.autograd.graph.increment_version(layer.param)  # written in place by the job
        return self._commit_layer(
            layer,
            *(dropped, kept, grown, after, gone, fresh, new_to_ever),
            written=job["written"],
            active=active,
        )

    def _grow_and_commit_one(
        self,
        layer: _Layer,
        dropped: torch.Tensor,
        kept: torch.Tensor,
        k: int,
        seed: int | None = None,
    ) -> int:
        """Grow k units of one layer after its drop and commit them (the one-layer path;
        `seed`: of random growth)."""
        before = self.masks[layer.name].reshape(-1, layer.group)[:, 0]
        after = without(before, dropped)  # the kept units; the grow adds its own
        grown = self._grow(layer, after, kept.numel(), k, seed)
        return self._commit_changes(layer, before, after, dropped, kept, grown)

    def _commit_changes(
        self,
        layer: _Layer,
        before: torch.Tensor,
        after: torch.Tensor,
        dropped: torch.Tensor,
        kept: torch.Tensor,
        grown: torch.Tensor,
    ) -> int:
        """`ops.apply_index_changes`, then `_commit_layer` (the one-layer path)."""
        ever = _units_view(self.ever_active[layer.name], layer.group)
        gone, fresh, new_to_ever = apply_index_changes(before, after, dropped, grown, ever)
        return self._commit_layer(layer, dropped, kept, grown, after, gone, fresh, new_to_ever)

    @staticmethod
    def _teamed(layers: list[_Layer], values: Any, also: Any = None) -> list[_Layer]:
        """The layers whose phase runs on PyTorch's OpenMP threads: the flat ones with float32
        CPU `values(layer)` (and `also(layer)`), when at least two of them are large (the
        small ones then fill in behind the large ones at no cost)."""
        flat = [
            layer
            for layer in layers
            if layer.group == 1 and openmp.usable(values(layer)) and (also is None or also(layer))
        ]
        large = sum(layer.param.numel() >= openmp.MIN_UNITS for layer in flat)
        return flat if large > 1 else []

    def _drop(self, layer: _Layer, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(dropped, kept) unit indices: the k active units of smallest magnitude, the rest."""
        active = self._active_units(layer)
        weight = layer.param.detach()
        if layer.group == 1:
            return drop_lowest_abs(weight.reshape(-1), active, k)
        # a kernel's magnitude: the sum over its k×k weights
        magnitude = weight.reshape(-1, layer.group)[active].abs().sum(1)
        return drop_lowest(magnitude, active, k)

    def _grow(
        self, layer: _Layer, kept: torch.Tensor, n_kept: int, k: int, seed: int | None = None
    ) -> torch.Tensor:
        """Unit indices of the k units not `kept` (a unit mask) with the highest |grow score|
        (random growth: k units drawn uniformly from `seed`, = the highest of uniform random
        scores; these may also be set in `kept`, which the commit then completes as the new
        mask)."""
        if self.options.growth_mode == "random":
            return grow_random_units(kept, k, self.generator, n_kept, in_place=True, seed=seed)
        if layer.group == 1:  # |score| is taken inside the selection (no copy on CPU)
            score = self._grow_score(layer).reshape(-1)
            return grow_highest_units(score, kept, k, absolute=True, n_kept=n_kept)
        score = group_scores(self._grow_score(layer).abs(), layer.group)
        return grow_highest_units(score, kept, k, n_kept=n_kept)

    def _commit_layer(
        self,
        layer: _Layer,
        dropped: torch.Tensor,
        kept: torch.Tensor,
        grown: torch.Tensor,
        after: torch.Tensor,
        gone: torch.Tensor,
        fresh: torch.Tensor,
        new_to_ever: torch.Tensor,
        written: list[bool] | None = None,
        active: torch.Tensor | None = None,
    ) -> int:
        """Commit one layer's drop-and-grow index changes (`ops.apply_index_changes`: the new
        unit mask `after`, the units gone, fresh and new to the ever-active record); returns
        its new connections. `written`: which of weight, first two optimizer states and float
        mask the layer's job already wrote; `active`: the new active units it listed.

        Only the touched units are written: by the invariant of `_masks_replaced`, inactive
        weights (and, with masked gradients, their optimizer state) are already 0, so zeroing
        the dropped-and-not-regrown units (state: the newly grown ones with dense gradients)
        equals re-multiplying everything by the new mask."""
        name = layer.name
        written = written or [False] * 4
        if not written[0]:
            with torch.no_grad():
                _units_view(layer.param, layer.group).index_fill_(0, gone, 0)
        reset = fresh if self.options.dense_gradients else gone
        for i, state in enumerate(optim_state.state_tensors(self.optimizer, layer.param)):
            if not (i < 2 and written[1 + i]):
                _units_view(state, layer.group).index_fill_(0, reset, 0)
        if name in self._ever_count:
            self._ever_count[name] += new_to_ever.numel() * layer.group
        old_mask, self.masks[name] = (
            self.masks[name],
            expand_groups(after, layer.group, layer.param.shape),
        )
        if written[3]:
            self._factor.moved(name, old_mask, self.masks[name])
        else:
            self._factor.changed(name, self.masks[name], gone, fresh, layer.group)
        # two ascending runs: the kept units, then the grown ones
        self._active[name] = torch.cat([kept, grown]) if active is None else active
        layer.budget += (grown.numel() - dropped.numel()) * layer.group
        return fresh.numel() * layer.group

    def _commit(self, new_masks: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> int:
        """Commit whole new masks (Pruning); returns the number of new connections."""
        changed = 0
        for name, layer in self.layers.items():
            new = new_masks[name]
            if new is not before[name]:  # layers the update left alone (dense ones) are skipped
                grown = new & ~before[name]
                changed += int(torch.count_nonzero(grown))
                # dropped and (re)grown-from-inactive weights start at 0
                layer.param.data.mul_(_as_factor(new))
                if self.options.dense_gradients:
                    optim_state.keep_entries(self.optimizer, layer.param, ~grown)
                else:
                    optim_state.keep_entries(self.optimizer, layer.param, new)
                self.masks[name] = new
                self.ever_active[name] |= new
                layer.budget = int(torch.count_nonzero(new))
        self._masks_replaced()
        return changed

    def _log_update(self, tick: int, alpha: float | None, changed: int) -> None:
        self._refresh_sparse_layers()
        total_active = sum(layer.budget for layer in self.layers.values())
        total = sum(layer.param.numel() for layer in self.layers.values())
        for name, ever in self.ever_active.items():
            if name not in self._ever_count:
                self._ever_count[name] = int(torch.count_nonzero(ever))
        self.update_log.append(
            {
                "step": self.step_count,
                "epoch": self.epoch_count,
                "tick": tick,
                "alpha": alpha,
                "density": total_active / total,
                "changed_fraction": changed / max(1, total_active),
                "itop_rate": sum(self._ever_count.values()) / total,
                "layer_densities": self.layer_densities(),
            }
        )

    # ------------------------------------------------------------------ queries
    def density(self) -> float:
        """Global density of the masked weights (1.0 for dense methods)."""
        if not self.layers:
            return 1.0
        return sum(layer.budget for layer in self.layers.values()) / sum(
            layer.param.numel() for layer in self.layers.values()
        )

    def layer_densities(self) -> dict[str, float]:
        """{parameter name: active fraction} of every masked layer (1.0 for dense methods)."""
        if not self.layers:
            return {n: 1.0 for n in maskable_parameters(self.model)}
        return {n: layer.budget / layer.param.numel() for n, layer in self.layers.items()}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Masks, budgets, step/epoch counters and generator state: plain tensors and numbers,
        loadable with `torch.load(..., weights_only=True)`."""
        return {
            "method": self.spec.name,
            "init": self.init,
            "masks": {n: m.detach().cpu().clone() for n, m in self.masks.items()},
            "ever_active": {n: m.detach().cpu().clone() for n, m in self.ever_active.items()},
            "budgets": {n: layer.budget for n, layer in self.layers.items()},
            "step": self.step_count,
            "epoch": self.epoch_count,
            "dense_grad_steps": self.dense_grad_steps,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()` and re-apply its masks to the weights. Raises
        `CheckpointError` when the state is for another method or another model's layers."""
        if state.get("method") != self.spec.name:
            raise CheckpointError(
                f"sparsity state is for method {state.get('method')!r}, this run uses {self.spec.name!r}"
            )
        if set(state["masks"]) != set(self.masks):
            raise CheckpointError("sparsity state masks do not match this model's masked layers")
        for name, layer in self.layers.items():
            mask = state["masks"][name]
            if tuple(mask.shape) != tuple(layer.param.shape):
                raise CheckpointError(
                    f"mask {name} has shape {tuple(mask.shape)}, model has {tuple(layer.param.shape)}"
                )
            self.masks[name] = mask.to(device=layer.param.device, dtype=torch.bool)
            self.ever_active[name] = state["ever_active"][name].to(
                device=layer.param.device, dtype=torch.bool
            )
            layer.budget = int(state["budgets"][name])
        self.step_count = int(state["step"])
        self.epoch_count = int(state["epoch"])
        self.dense_grad_steps = int(state.get("dense_grad_steps", 0))
        self.generator.set_state(state["generator"])
        self._masks_replaced()


def sparsify(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    method: str = "RigL",
    density: float = 0.2,
    init: str | None = None,
    total_steps: int | None = None,
    **options: Any,
) -> SparsityController:
    """Make `model` sparse-trained by `method`; returns the controller (see module docstring).

    `options` are the reference config's masking fields (`prune_rate`, `interval`, `end_when`,
    `start_when`, `apply_when`, `decay_schedule`, `growth_mode`, `prune_mode`,
    `redistribution_mode`, `dense_gradients`, `final_density`, `lottery_mask_path`), ours
    (`sparse_kernels`: CSR training of sparse Linear layers; `scale_init`: initial weights
    rescaled to each unit's sparse fan-in), plus `steps_per_epoch`, `seed` and `attach`.

    Examples:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(20, 20), torch.nn.ReLU(), torch.nn.Linear(20, 2))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        >>> ctl = sparsify(net, opt, method="RigL", density=0.5, init="ERK", total_steps=100, interval=10)
        >>> net(torch.randn(8, 20)).sum().backward(); ctl.step()
        >>> round(ctl.density(), 3)
        0.5
    """
    return SparsityController(model, optimizer, method, density, init, total_steps, **options)
