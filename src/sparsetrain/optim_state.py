"""Optimizer-state adapters: zero the per-weight state of connections that (re)appear.

A regrown connection must start like a fresh one — weight 0 and no stale momentum — while a
connection kept through an update keeps its state. Supported: SGD (momentum_buffer) and the
Adam family (exp_avg, exp_avg_sq, max_exp_avg_sq). Anything else is refused up front, since
silently keeping its state would change the method.
"""

from __future__ import annotations

import torch

from sparsetrain.errors import UnsupportedOptimizer

STATE_KEYS: dict[type[torch.optim.Optimizer], tuple[str, ...]] = {
    torch.optim.SGD: ("momentum_buffer",),
    torch.optim.Adam: ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    torch.optim.AdamW: ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
}
MOMENTUM_KEYS = ("momentum_buffer", "exp_avg")


def check_supported(optimizer: torch.optim.Optimizer) -> None:
    """Raise `UnsupportedOptimizer`, naming the supported optimizers, for any other kind."""
    if not any(isinstance(optimizer, t) for t in STATE_KEYS):
        names = ", ".join(f"torch.optim.{t.__name__}" for t in STATE_KEYS)
        raise UnsupportedOptimizer(
            f"sparsify does not support {type(optimizer).__name__}: its per-weight state could "
            f"not be reset for regrown connections; supported optimizers: {names}"
        )


def state_tensors(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> list[torch.Tensor]:
    """The per-weight state tensors of `param` (shape of `param`), e.g. the momentum buffer."""
    state = optimizer.state.get(param, {})
    keys = next(keys for t, keys in STATE_KEYS.items() if isinstance(optimizer, t))
    return [
        state[k]
        for k in keys
        if isinstance(state.get(k), torch.Tensor) and state[k].shape == param.shape
    ]


def reset_entries(
    optimizer: torch.optim.Optimizer, param: torch.Tensor, entries: torch.Tensor
) -> None:
    """Zero the optimizer state of `param` where the bool `entries` is True."""
    for tensor in state_tensors(optimizer, param):
        tensor.masked_fill_(entries, 0)


def keep_entries(optimizer: torch.optim.Optimizer, param: torch.Tensor, keep: torch.Tensor) -> None:
    """Zero the optimizer state of `param` where the bool `keep` is False (`reset_entries(~keep)`,
    as a multiply by the mask viewed as uint8: several times faster than `masked_fill_`)."""
    factor = keep.view(torch.uint8)
    for tensor in state_tensors(optimizer, param):
        tensor.mul_(factor)


def momentum(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> torch.Tensor | None:
    """The first-moment buffer of `param` (SGD momentum or Adam exp_avg), if any yet."""
    state = optimizer.state.get(param, {})
    for key in MOMENTUM_KEYS:
        if isinstance(state.get(key), torch.Tensor):
            return state[key]
    return None
