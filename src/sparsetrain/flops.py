"""FLOPs accounting: dense per-layer costs traced once, per-step costs from the live masks.

Counting convention
-------------------
* We count **multiply-accumulates (MACs) of the masked weights only**: the weights of every
  `nn.Conv2d` and `nn.Linear` (the classifier included), i.e. exactly the tensors that
  `sparsetrain.masks.maskable_parameters` masks. Biases, normalisation, activations, pooling
  and the loss are not counted (they are a small share of a CNN's cost and do not change
  with sparsity). One MAC = one multiply + one add; every figure we publish is a *ratio* to the
  dense model, so the factor 2 between MACs and FLOPs cancels.
* Dense forward MACs per layer and per example are traced **once per (model, input shape)**
  with forward hooks on a batch of one (eval mode, no grad, no BN-statistics side effect):
  a conv costs `out_elements · (c_in/groups) · k_h · k_w`, a linear layer
  `out_elements · in_features`.
* A sparse layer at density ρ costs ρ × its dense MACs: f_S = Σ_l ρ_l·F_l, f_D = Σ_l F_l.
* Backward ≈ 2 × forward. A training step costs 3·f_S with sparse gradients and
  2·f_S + f_D when the method needs the dense gradient (SNFS every step, RigL at update steps).
* `train_flops` = (total training MACs) / (MACs of a 1x dense run: steps/k · 3·f_D), so a
  `training_multiplier` k run (RigL_2x) reports k × its per-step ratio (the reference's
  convention); `test_flops` = f_S / f_D for the current masks.
* Small_Dense: ratios are to the *full-width* dense model (`reference_flops`).

The closed forms of REFERENCE.md (Static/SET 3 f_S, SNFS 2 f_S + f_D, RigL
(3 f_S ΔT + 2 f_S + f_D)/(ΔT + 1), Pruning: time-average of the forward cost) are used by
`report` (no training) and by the tests as checks of the per-step `FlopsAccountant`.
"""

from __future__ import annotations

import functools
import math
import os
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from sparsetrain.errors import CheckpointError, ConfigError

__all__ = [
    "FlopsAccountant",
    "dense_layer_flops",
    "densities_from_checkpoint",
    "reference_table",
    "report",
    "rigl_train_ratio",
]

# --------------------------------------------------------------------------- tracing
_TRACE_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], dict[str, int]]] = (
    weakref.WeakKeyDictionary()
)


def dense_layer_flops(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Dense forward MACs per example of every masked weight: {parameter name: MACs}.

    `input_shape` is the shape of ONE example, e.g. `(3, 32, 32)`; the trace runs a batch of
    one zero tensor through `model` (eval mode, no grad; the training flag of every module is
    restored). Names and order are those of `sparsetrain.masks.maskable_parameters`. Cached per
    (model, input shape): a second call is a dictionary look-up.
    """
    from sparsetrain.masks import maskable_parameters, unwrap

    shape = tuple(int(s) for s in input_shape)
    per_model = _TRACE_CACHE.setdefault(model, {})
    if shape in per_model:
        return dict(per_model[shape])

    inner = unwrap(model)
    names = list(maskable_parameters(inner))
    wanted = set(names)
    flops = dict.fromkeys(names, 0)
    hooks = []

    def make_hook(param_name: str):
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            per_example = output.numel() // output.shape[0]
            flops[param_name] += per_example * module.weight[0].numel()

        return hook

    for module_name, module in inner.named_modules():
        param_name = f"{module_name}.weight" if module_name else "weight"
        if param_name in wanted:
            hooks.append(module.register_forward_hook(make_hook(param_name)))

    first = next(inner.parameters())
    modes = {m: m.training for m in inner.modules()}
    try:
        inner.eval()
        with torch.no_grad():
            inner(torch.zeros((1, *shape), device=first.device, dtype=first.dtype))
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    per_model[shape] = dict(flops)
    return flops


# --------------------------------------------------------------------------- accountant
class FlopsAccountant:
    """Per-step FLOPs from cached per-layer densities; cheap enough for every optimizer step.

    The `SparsityController` calls `on_masks_changed(layer_densities)` after initialisation and
    after every mask update (host work is fine there) and `on_step(dense_grad)` once per
    optimizer step (pure Python arithmetic on cached floats: no tensors, no host sync). Before
    the first `on_masks_changed` every layer counts as dense (a Dense or Small_Dense run needs
    no masks at all).

    Totals are MACs *per training example* summed over optimizer steps (multiply by the batch
    size for a per-run count).
    """

    def __init__(
        self,
        dense_layer_flops: Mapping[str, int],
        training_multiplier: int = 1,
        reference_flops: float | None = None,
    ):
        if not dense_layer_flops:
            raise ConfigError("FlopsAccountant needs the dense FLOPs of at least one layer")
        if training_multiplier <= 0:
            raise ConfigError(f"training_multiplier must be >= 1, got {training_multiplier!r}")
        self.dense_layer_flops = {n: int(f) for n, f in dense_layer_flops.items()}
        self.training_multiplier = training_multiplier
        self.dense_flops = float(sum(self.dense_layer_flops.values()))  # f_D of this model
        # what ratios are relative to: the full-width dense model (Small_Dense) or this one
        self.reference_flops = float(reference_flops or self.dense_flops)
        self.layer_densities: dict[str, float] = dict.fromkeys(self.dense_layer_flops, 1.0)
        self.sparse_flops = self.dense_flops  # f_S, cached
        self.steps = 0
        self.dense_grad_steps = 0
        self.train_flops_total = 0.0

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        input_shape: Sequence[int],
        training_multiplier: int = 1,
        reference: nn.Module | float | None = None,
    ) -> FlopsAccountant:
        """Trace `model` (and the full-width `reference` model, for Small_Dense) and build."""
        if isinstance(reference, nn.Module):
            reference = float(sum(dense_layer_flops(reference, input_shape).values()))
        return cls(dense_layer_flops(model, input_shape), training_multiplier, reference)

    # -- hooks called by the controller
    def on_masks_changed(self, layer_densities: Mapping[str, float]) -> None:
        unknown = set(layer_densities) - set(self.dense_layer_flops)
        if unknown:
            raise ConfigError(
                f"FLOPs accountant got densities for layers it never traced: {sorted(unknown)}"
            )
        self.layer_densities.update({n: float(d) for n, d in layer_densities.items()})
        self.sparse_flops = sum(
            self.layer_densities[n] * f for n, f in self.dense_layer_flops.items()
        )

    def on_step(self, dense_grad: bool = False) -> None:
        f_s = self.sparse_flops
        if dense_grad:
            self.train_flops_total += 2.0 * f_s + self.dense_flops
            self.dense_grad_steps += 1
        else:
            self.train_flops_total += 3.0 * f_s
        self.steps += 1

    # -- figures
    def inference_ratio(self) -> float:
        """f_S / f_D of the current masks (the test FLOPs)."""
        return self.sparse_flops / self.reference_flops

    def train_ratio(self) -> float:
        """Training MACs so far relative to a 1x dense run of the same number of (1x) steps.

        Before any step: the ratio of a plain sparse step, k · f_S / f_D.
        """
        if self.steps == 0:
            return self.training_multiplier * self.sparse_flops / self.reference_flops
        dense_run = 3.0 * self.reference_flops * self.steps / self.training_multiplier
        return self.train_flops_total / dense_run

    def summary(self) -> dict[str, Any]:
        return {
            "train_flops": self.train_ratio(),
            "test_flops": self.inference_ratio(),
            "train_flops_total": self.train_flops_total,
            "test_flops_total": self.sparse_flops,
            "dense_flops": self.reference_flops,
            "steps": self.steps,
            "dense_grad_steps": self.dense_grad_steps,
            "training_multiplier": self.training_multiplier,
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values only (loadable with `torch.load(..., weights_only=True)`)."""
        return {
            "dense_layer_flops": dict(self.dense_layer_flops),
            "training_multiplier": self.training_multiplier,
            "reference_flops": self.reference_flops,
            "layer_densities": dict(self.layer_densities),
            "steps": self.steps,
            "dense_grad_steps": self.dense_grad_steps,
            "train_flops_total": self.train_flops_total,
        }

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        if dict(sd["dense_layer_flops"]) != self.dense_layer_flops:
            raise CheckpointError("FLOPs state belongs to another model (layer FLOPs differ)")
        self.training_multiplier = int(sd["training_multiplier"])
        self.reference_flops = float(sd["reference_flops"])
        self.on_masks_changed(sd["layer_densities"])
        self.steps = int(sd["steps"])
        self.dense_grad_steps = int(sd["dense_grad_steps"])
        self.train_flops_total = float(sd["train_flops_total"])


# --------------------------------------------------------------------------- closed forms
def rigl_train_ratio(sparse_ratio: float, interval: int) -> float:
    """RigL training FLOPs per step relative to a dense step while updates happen:
    (3 f_S ΔT + 2 f_S + f_D) / ((ΔT + 1) · 3 f_D), with f_S / f_D = `sparse_ratio`."""
    return (3 * sparse_ratio * interval + 2 * sparse_ratio + 1) / (3 * (interval + 1))


def _to_steps(value: float, total_steps: int | None, what: str) -> float | None:
    """A schedule point as a fraction of training: (0, 1) = fraction, >= 1 = steps, < 0 = never."""
    if value < 0:
        return None
    if value < 1:
        return float(value)
    if total_steps is None:
        raise ConfigError(
            f"{what}={value} is a step count: pass total_steps (or give it as a fraction in (0, 1))"
        )
    return min(1.0, value / total_steps)


def _pruning_mean_sparsity_fraction(
    start: float, end: float, interval: int, total_steps: int | None
) -> float:
    """Time-average over training of s_t / s_f for a dense start (s_i = 0).

    With `total_steps` the schedule is stepped like the trainer: the mask changes at steps
    t0, t0 + ΔT, ... <= t_end and is held in between. Without it, the continuous limit."""
    if total_steps is None:  # start/end are fractions here
        cubic = (end - start) * 0.75  # mean of 1 − (1 − τ)³ over the ramp is 3/4
        return cubic + (1.0 - end)
    t0, t1 = start * total_steps, end * total_steps
    events = []
    t = math.ceil(t0)
    while t <= t1:
        events.append(t)
        t += max(1, interval)
    if not events or events[-1] < t1:  # the schedule reaches s_f at t_end
        events.append(math.ceil(t1))
    acc = 0.0
    for i, t in enumerate(events):
        nxt = events[i + 1] if i + 1 < len(events) else total_steps
        level = 1.0 - (1.0 - (t - t0) / (t1 - t0)) ** 3 if t1 > t0 else 1.0
        acc += max(0, min(nxt, total_steps) - t) * min(1.0, level)
    return acc / total_steps


# --------------------------------------------------------------------------- masks from disk
def _load_checkpoint(path: str | os.PathLike) -> Any:
    """torch.load (weights only) of a checkpoint file, or of `<run dir>/ckpts/last.pt`."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "ckpts", "last.pt")
    if not os.path.exists(path):
        raise CheckpointError(f"masks_from: no checkpoint at {path!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise CheckpointError(f"masks_from: cannot read {path!r}: {exc}") from None


def densities_from_checkpoint(path: str | os.PathLike, names: Sequence[str]) -> dict[str, float]:
    """Layer densities of a saved run: `ckpt["sparsity"]["masks"]` (bool masks) when present,
    else the non-zero fraction of the weights in `ckpt["model"]` (or of a bare state dict)."""
    ckpt = _load_checkpoint(path)

    def strip(d: Mapping[str, Any]) -> dict[str, Any]:
        return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in d.items()}

    source: dict[str, Any] | None = None
    if isinstance(ckpt, Mapping):
        sparsity = ckpt.get("sparsity")
        if isinstance(sparsity, Mapping) and isinstance(sparsity.get("masks"), Mapping):
            source = strip(sparsity["masks"])
        elif isinstance(ckpt.get("model"), Mapping):
            source = strip(ckpt["model"])
        elif all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            source = strip(ckpt)
    if source is None:
        raise CheckpointError(
            f"masks_from: {os.fspath(path)!r} has neither 'sparsity' -> 'masks' nor a 'model' "
            "state dict"
        )
    missing = [n for n in names if n not in source]
    if missing:
        raise CheckpointError(
            f"masks_from: {os.fspath(path)!r} lacks {len(missing)} layer(s) of this model, "
            f"e.g. {missing[:3]} (wrong model?)"
        )
    return {n: float(torch.as_tensor(source[n]).ne(0).float().mean()) for n in names}


def _measured_flops(path: str | os.PathLike) -> dict[str, Any] | None:
    """The trainer's FLOPs accountant state saved in a checkpoint, if any."""
    ckpt = _load_checkpoint(path)
    state = ckpt.get("flops") if isinstance(ckpt, Mapping) else None
    return state if isinstance(state, Mapping) and "train_flops_total" in state else None


# --------------------------------------------------------------------------- report
@functools.lru_cache(maxsize=64)
def _traced(
    model: str, in_channels: int, image_size: tuple[int, int], num_classes: int, width: float
) -> tuple[nn.Module, dict[str, int]]:
    """A shape-only (meta device) model and its dense layer FLOPs, built once per key."""
    from types import SimpleNamespace

    from sparsetrain import models

    info = SimpleNamespace(in_channels=in_channels, image_size=image_size, num_classes=num_classes)
    with torch.device("meta"):  # no memory, no initialisation: shapes are all we need
        net = models.build(model, info, width=width)
    return net, dense_layer_flops(net, (in_channels, *image_size))


def _trace(model: str, info: Any, width: float = 1.0) -> tuple[nn.Module, dict[str, int]]:
    from sparsetrain import models

    size = tuple(int(s) for s in info.image_size)
    net, flops = _traced(
        models.MODELS.canonical(model), int(info.in_channels), size, int(info.num_classes), width
    )
    return net, dict(flops)


def report(
    model: str,
    dataset: str | Any,
    method: str,
    density: float,
    init: str | None = None,
    training_multiplier: int = 1,
    masks_from: str | os.PathLike | None = None,
    *,
    interval: int = 100,
    start_when: float = 0,
    end_when: float = 0.75,
    total_steps: int | None = None,
    final_density: float | None = None,
) -> dict[str, Any]:
    """Train / test FLOPs of `method` on `model`/`dataset`, relative to the dense model,
    computed without training from the initial layer densities (or from `masks_from`).

    * Static, SET, Lottery (sparse gradients): train = 3 f_S per step.
    * SNFS (dense gradients every step): 2 f_S + f_D.
    * RigL and RigL_reinit: the closed form (3 f_S ΔT + 2 f_S + f_D)/(ΔT + 1) while updates
      happen (steps in [start_when, end_when)), 3 f_S after.
    * Small_Dense: the width-scaled dense model against the full-width one.
    * Pruning: the time-average of the forward cost under the Zhu–Gupta schedule (dense start to
      `final_density`, default `density`). Without `masks_from` the final masks are unknown,
      every layer is assumed at the global density and the result has `"estimate": True`. With
      `masks_from` the test figure is the saved masks' exact cost, and the training figure the
      trainer's measured one when the checkpoint holds its `"flops"` state (else an estimate
      that interpolates the FLOPs density linearly in the global sparsity).
    * `training_multiplier` k multiplies the training figure (schedules scale with k).

    `start_when` / `end_when` are fractions of training when in (0, 1), step counts when >= 1
    (then `total_steps`, of the 1x run, is needed), never when < 0.

    Returns {"model", "dataset", "method", "init", "density", "training_multiplier", "train",
    "test", "estimate", "dense_flops", "sparse_flops", "layers": {name: {"density",
    "dense_flops", "shape"}}}.
    """
    from sparsetrain import models
    from sparsetrain.algorithms import METHODS, small_dense_width
    from sparsetrain.distributions import check_density, layer_densities
    from sparsetrain.masks import maskable_parameters

    spec = METHODS.get(method)
    name = METHODS.canonical(method)
    density = check_density(density)
    if int(training_multiplier) != training_multiplier or training_multiplier < 1:
        raise ConfigError(
            f"training_multiplier must be a positive integer, got {training_multiplier!r}"
        )
    k = int(training_multiplier)
    info = models.input_spec(dataset)
    net, dense = _trace(model, info)
    f_d = float(sum(dense.values()))
    shapes = {n: tuple(p.shape) for n, p in maskable_parameters(net).items()}
    out: dict[str, Any] = {
        "model": models.MODELS.canonical(model),
        "dataset": getattr(info, "name", str(dataset)),
        "method": name,
        "init": None,
        "density": density,
        "training_multiplier": k,
        "estimate": False,
        "dense_flops": f_d,
    }

    def finish(
        layer_flops: dict[str, int],
        dens: dict[str, float],
        layer_shapes: dict[str, tuple],
        train: float,
        test: float,
    ) -> dict[str, Any]:
        out["layers"] = {
            n: {"density": dens[n], "dense_flops": layer_flops[n], "shape": list(layer_shapes[n])}
            for n in layer_flops
        }
        out["sparse_flops"] = sum(dens[n] * layer_flops[n] for n in layer_flops)
        out["train"], out["test"] = train, test
        return out

    if spec.dense_model:
        width = 1.0 if name == "Dense" else float(small_dense_width(model, info, density))
        out["width"] = width
        small, small_flops = _trace(model, info, width)
        small_shapes = {n: tuple(p.shape) for n, p in maskable_parameters(small).items()}
        ratio = sum(small_flops.values()) / f_d
        out["density"] = 1.0 if name == "Dense" else density
        return finish(small_flops, dict.fromkeys(small_flops, 1.0), small_shapes, k * ratio, ratio)

    if spec.pruning:
        final = check_density(
            final_density if final_density is not None else density, "final_density"
        )
        out["density"] = final
        if masks_from is not None:
            dens = densities_from_checkpoint(masks_from, list(dense))
            out["init"] = "masks_from"
            out["masks_from"] = os.fspath(masks_from)
        else:
            dens = dict.fromkeys(dense, final)  # unknown layer-wise result of global pruning
            out["estimate"] = True
        test = sum(dens[n] * dense[n] for n in dense) / f_d
        measured = _measured_flops(masks_from) if masks_from is not None else None
        if measured is not None:
            acc = FlopsAccountant(dense)
            acc.load_state_dict(measured)  # CheckpointError if it counted another model
            train = acc.train_ratio()
        else:
            t0 = _to_steps(start_when, total_steps, "start_when") or 0.0
            t1 = _to_steps(end_when, total_steps, "end_when")
            t1 = 1.0 if t1 is None else t1
            mean_frac = _pruning_mean_sparsity_fraction(t0, t1, interval, total_steps)
            # FLOPs density moves from 1 (dense) to `test` as the sparsity goes 0 -> s_f
            train = k * (1.0 - (1.0 - test) * mean_frac)
            out["estimate"] = True
        return finish(dense, dens, shapes, train, test)

    if masks_from is not None:
        dens = densities_from_checkpoint(masks_from, list(dense))
        out["init"] = "masks_from"
        out["masks_from"] = os.fspath(masks_from)
    else:
        init = init or spec.default_init
        if init in ("lottery", "lottery-ticket"):
            raise ConfigError(
                f"{name} with init {init!r} takes its masks from a checkpoint: pass masks_from="
            )
        dens = layer_densities(net, density, init)
        dens = {n: dens.get(n, 1.0) for n in dense}
        out["init"] = init
    s = sum(dens[n] * dense[n] for n in dense) / f_d
    if spec.dense_gradients == "every_step":
        per_step = (2 * s + 1) / 3
    elif spec.dense_gradients == "at_update":
        t0 = _to_steps(start_when, total_steps, "start_when")
        t1 = _to_steps(end_when, total_steps, "end_when")
        updating = 0.0 if t0 is None or t1 is None else max(0.0, t1 - t0)
        per_step = updating * rigl_train_ratio(s, interval) + (1 - updating) * s
        out["interval"] = interval
    else:
        per_step = s
    return finish(dense, dens, shapes, k * per_step, s)


# --------------------------------------------------------------------------- reference table
#: (label, method, init, training_multiplier, published train, published test)
REFERENCE_ROWS: tuple[tuple[str, str, str | None, int, float, float], ...] = (
    ("Small Dense", "Small_Dense", None, 1, 0.20, 0.20),
    ("Pruning", "Pruning", None, 1, 0.41, 0.27),
    ("RigL", "RigL", "random", 1, 0.20, 0.20),
    ("RigL (ERK)", "RigL", "ERK", 1, 0.35, 0.35),
    ("RigL_2x", "RigL", "random", 2, 0.41, 0.20),
    ("RigL_2x (ERK)", "RigL", "ERK", 2, 0.70, 0.35),
)


def reference_table(
    model: str = "wrn-22-2", dataset: str = "CIFAR10", density: float = 0.2
) -> list[dict]:
    """The published CIFAR-10 WRN-22-2 (80% sparsity) FLOPs rows next to ours.

    Pruning has no trained mask here, so its row is the Zhu–Gupta estimate (uniform layers);
    the published 0.41 / 0.27 comes from a trained global-magnitude mask.
    """
    rows = []
    for label, method, init, k, pub_train, pub_test in REFERENCE_ROWS:
        r = report(model, dataset, method, density, init, training_multiplier=k)
        rows.append(
            {
                "label": label,
                "method": method,
                "init": r["init"],
                "training_multiplier": k,
                "train": r["train"],
                "test": r["test"],
                "published_train": pub_train,
                "published_test": pub_test,
                "estimate": r["estimate"],
            }
        )
    return rows
