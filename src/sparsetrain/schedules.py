"""Schedules: pure functions of the step (or epoch) counter.

- `update_fraction`: α_t, the fraction of a layer's active weights replaced at an update.
  cosine α/2·(1 + cos(π t / T_end)), linear α·(1 − t / T_end), constant α.
- `zhu_gupta_density`: gradual magnitude pruning, s_t = s_f + (s_i − s_f)(1 − (t − t0)/(t_end − t0))³.
- `is_update_step`: updates every `interval` ticks in [start, end).
"""

from __future__ import annotations

import math

from sparsetrain.errors import ConfigError, choices_message

DECAY_SCHEDULES = ("cosine", "linear", "constant", "magnitude-prune")


def update_fraction(t: int, alpha: float, end: int, schedule: str = "cosine") -> float:
    """α_t: the fraction of each layer's active weights dropped (and regrown) at tick `t`.

    Examples:
        >>> update_fraction(0, 0.3, 100)  # cosine starts at α
        0.3
        >>> round(update_fraction(50, 0.3, 100), 6), update_fraction(50, 0.3, 100, "linear")
        (0.15, 0.15)
        >>> round(update_fraction(100, 0.3, 100), 6)  # and reaches 0 at T_end
        0.0
    """
    if schedule == "cosine":
        return alpha / 2 * (1 + math.cos(math.pi * min(t, end) / end))
    if schedule == "linear":
        return alpha * max(0.0, 1 - t / end)
    if schedule == "constant":
        return alpha
    raise ConfigError(choices_message("decay_schedule", schedule, DECAY_SCHEDULES[:3]))


def zhu_gupta_density(
    t: int, initial_density: float, final_density: float, start: int, end: int
) -> float:
    """Density (1 − sparsity) at tick t of the Zhu & Gupta cubic schedule.

    Examples:
        >>> zhu_gupta_density(700, 1.0, 0.2, start=700, end=65918)  # dense until t0
        1.0
        >>> round(zhu_gupta_density(33309, 1.0, 0.2, start=700, end=65918), 6)  # halfway: s = 0.8·(1 − 0.5³)
        0.3
        >>> zhu_gupta_density(70000, 1.0, 0.2, start=700, end=65918)
        0.2
    """
    if t <= start:
        return initial_density
    if t >= end:
        return final_density
    s_i, s_f = 1 - initial_density, 1 - final_density
    progress = (t - start) / (end - start)
    return 1 - (s_f + (s_i - s_f) * (1 - progress) ** 3)


def is_update_step(t: int, start: int, end: int, interval: int) -> bool:
    """True when tick t (1-based count of finished steps/epochs) triggers a mask update.

    Examples:
        >>> [t for t in range(1, 1000) if is_update_step(t, start=0, end=400, interval=100)]
        [100, 200, 300]
    """
    return end >= 0 and start <= t < end and (t - start) % interval == 0 and t > 0


def resolve_tick(value: float, total: int | None, what: str) -> int:
    """`end_when`/`start_when` value → absolute tick. A float in (0, 1) is a fraction of
    `total`; -1 means never; anything else is an absolute count."""
    if value == -1:
        return -1
    if 0 < value < 1:
        if total is None:
            raise ConfigError(
                f"{what}={value} is a fraction of training: pass total_steps "
                "(and steps_per_epoch when apply_when=epoch_end)"
            )
        return max(1, round(value * total))
    if value < 0 or value != int(value):
        raise ConfigError(f"{what} must be -1, a fraction in (0, 1) or a whole count, got {value}")
    return int(value)
