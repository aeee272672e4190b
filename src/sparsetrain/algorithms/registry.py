"""Typed registry of the reference system's methods, with their reference defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sparsetrain.registry import Registry


@dataclass(frozen=True)
class MethodSpec:
    """What a method is: data, not code. Option values are the reference config's defaults.

    Examples:
        >>> spec = METHODS.get("RigL")
        >>> spec.default_init, spec.dynamic, spec.dense_gradients, spec.option("prune_rate")
        ('ERK', True, 'at_update', 0.3)
        >>> METHODS.get("SNFS").dense_gradients, METHODS.canonical("Small-Dense")
        ('every_step', 'Small_Dense')
    """

    name: str
    dense_model: bool = False  # Dense / Small_Dense: no masks at all
    pruning: bool = False  # Zhu-Gupta global magnitude pruning from a dense start
    init_from_checkpoint: bool = False  # masks from a previous run (Lottery, RigL_reinit)
    rewind_weights: bool = False  # Lottery: weights back to the source run's step-0 values
    default_init: str = "random"
    defaults: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))

    def option(self, key: str, default: Any = None) -> Any:
        """The method's reference default for masking option `key`."""
        return self.defaults.get(key, default)

    @property
    def dynamic(self) -> bool:
        """True when masks change by drop/grow during training."""
        return self.option("growth_mode", "none") != "none" and not self.pruning

    @property
    def dense_gradients(self) -> str:
        """When the method needs a dense gradient: "never", "at_update" or "every_step"."""
        if self.option("dense_gradients", False):
            return "every_step"
        if self.option("growth_mode") == "absolute-gradient":
            return "at_update"
        return "never"


METHODS: Registry[MethodSpec] = Registry("masking method")


def _register(name: str, *aliases: str, **kwargs: Any) -> None:
    defaults = MappingProxyType(kwargs.pop("defaults", {}))
    METHODS.add(name, MethodSpec(name=name, defaults=defaults, **kwargs), *aliases)


_STATIC = {"growth_mode": "none", "end_when": -1, "prune_rate": 0.0}
_RIGL = {
    "growth_mode": "absolute-gradient",
    "prune_rate": 0.3,
    "interval": 100,
    "apply_when": "step_end",
    "decay_schedule": "cosine",
    "end_when": 0.75,
}
_register("Dense", dense_model=True, defaults=_STATIC)
_register("Small_Dense", "Small-Dense", dense_model=True, defaults=_STATIC)
_register("Static", defaults=_STATIC)
_register(
    "SET",
    defaults={
        "growth_mode": "random",
        "prune_rate": 0.5,
        "interval": 1,
        "apply_when": "epoch_end",
        "decay_schedule": "cosine",
        "end_when": 0.99,
    },
)
_register(
    "SNFS",
    defaults={
        "growth_mode": "momentum",
        "redistribution_mode": "momentum",
        "dense_gradients": True,
        "prune_rate": 0.5,
        "interval": 1,
        "apply_when": "epoch_end",
        "decay_schedule": "cosine",
        "end_when": 0.99,
    },
)
_register("RigL", default_init="ERK", defaults=_RIGL)
_register("RigL_reinit", init_from_checkpoint=True, default_init="lottery", defaults=_RIGL)
_register(
    "Pruning",
    pruning=True,
    defaults={
        "growth_mode": "none",
        "prune_mode": "global-magnitude",
        "decay_schedule": "magnitude-prune",
        "apply_when": "step_end",
        "start_when": 700,
        "end_when": 0.75,
        "interval": 100,
        "final_density": 0.2,
    },
)
_register(
    "Lottery",
    init_from_checkpoint=True,
    rewind_weights=True,
    default_init="lottery",
    defaults=_STATIC,
)


def small_dense_width(model_name: str, dataset: Any, density: float) -> float:
    """Width multiplier whose dense model has the parameter count closest to density × dense.

    Searched by bisection over the real width (models round channel counts), so the result
    accounts for biases, normalisation layers and rounding, not only √density."""
    import torch

    from sparsetrain.models import build

    def n_params(width: float) -> int:
        with torch.device("meta"):  # shapes only: no memory, no init cost
            return sum(p.numel() for p in build(model_name, dataset, width=width).parameters())

    target = density * n_params(1.0)
    lo, hi = 0.0, 1.0
    for _ in range(20):
        mid = (lo + hi) / 2
        if n_params(mid) < target:
            lo = mid
        else:
            hi = mid
    return min((lo, hi), key=lambda w: abs(n_params(w) - target) if w > 0 else float("inf"))
