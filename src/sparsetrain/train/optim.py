"""Optimizer and learning-rate schedule builders.

The schedule is a pure function of the optimizer step (`lr_at`), so resuming needs no scheduler
state beyond the step counter: the loop sets the learning rate before every optimizer step.

* `step` (reference): lr × decay_factor^(t // decay_frequency), like `StepLR` stepped per
  optimizer step.
* `cosine` (ours): lr × ½(1 + cos(π·(t − warmup)/(T − warmup))) after the warm-up.
* `warmup_steps` W > 0: linear ramp lr·(t + 1)/W for the first W steps (either schedule).

`training_multiplier` k is applied by the caller (reference behaviour: epochs and
`decay_frequency` are multiplied, `warmup_steps` is not).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from sparsetrain.errors import ConfigError, choices_message

OPTIMIZERS = ("SGD", "Adam")
LR_SCHEDULES = ("step", "cosine")


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: Any) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov, weight decay) or Adam from an `OptimizerConfig`."""
    name = str(cfg.name)
    if name.lower() == "sgd":
        momentum = float(cfg.get("momentum", 0.0) or 0.0)
        nesterov = bool(cfg.get("use_nesterov", False)) and momentum > 0
        return torch.optim.SGD(
            params,
            lr=float(cfg.lr),
            momentum=momentum,
            weight_decay=float(cfg.weight_decay),
            nesterov=nesterov,
        )
    if name.lower() == "adam":
        return torch.optim.Adam(params, lr=float(cfg.lr), weight_decay=float(cfg.weight_decay))
    raise ConfigError(choices_message("optimizer", name, OPTIMIZERS))


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate as a pure function of the number of optimizer steps already taken."""

    base_lr: float
    total_steps: int
    schedule: str = "step"
    decay_frequency: int = 25000
    decay_factor: float = 0.1
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in LR_SCHEDULES:
            raise ConfigError(choices_message("lr_schedule", self.schedule, LR_SCHEDULES))

    def lr_at(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.schedule == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.base_lr * self.decay_factor ** (step // self.decay_frequency)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every parameter group's learning rate for optimizer step `step`; return it."""
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_schedule(cfg: Any, total_steps: int, multiplier: int = 1) -> LRSchedule:
    """The LR schedule of an `OptimizerConfig`, with `decay_frequency` scaled by k."""
    return LRSchedule(
        base_lr=float(cfg.lr),
        total_steps=int(total_steps),
        schedule=str(cfg.get("lr_schedule", "step")),
        decay_frequency=int(cfg.decay_frequency) * int(multiplier),
        decay_factor=float(cfg.decay_factor),
        warmup_steps=int(cfg.warmup_steps),
    )
