"""Drop-and-grow (SET, SNFS, RigL): pure functions on one layer's weight, mask and scores.

Semantics follow the reference RigL code: an update drops the k active connections with the
smallest |w| and grows k connections with the highest grow score among all connections *not
kept* by the drop. A just-dropped connection can therefore be regrown; a connection active
before and after the update is untouched (the controller keeps its weight and optimizer state),
and only connections inactive before the update are new (weight 0, optimizer state 0).

With `group > 1` (structured masks) scores are summed over each k×k kernel and whole kernels
are dropped and grown.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sparsetrain.distributions import apportion
from sparsetrain.ops import expand_groups, group_scores, select_highest, select_lowest


def _units(mask: torch.Tensor, group: int) -> torch.Tensor:
    return mask.reshape(-1, group)[:, 0] if group > 1 else mask.reshape(-1)


def drop_lowest_magnitude(
    weight: torch.Tensor, mask: torch.Tensor, k: int, group: int = 1
) -> torch.Tensor:
    """The mask after removing the k active units with the smallest magnitude."""
    active = _units(mask, group)
    dropped = select_lowest(group_scores(weight.detach().abs(), group), active, k)
    return expand_groups(active & ~dropped, group, mask.shape)


def grow_highest(
    grow_score: torch.Tensor, kept: torch.Tensor, k: int, group: int = 1
) -> torch.Tensor:
    """The mask after adding the k inactive units (w.r.t. `kept`) with the highest score."""
    kept_units = _units(kept, group)
    grown = select_highest(group_scores(grow_score, group), ~kept_units, k)
    return expand_groups(kept_units | grown, group, kept.shape)


def redistribute(
    total: int, layer_scores: Mapping[str, float], capacity: Mapping[str, int]
) -> dict[str, int]:
    """SNFS redistribution: split `total` regrowth across layers ∝ their score (mean |momentum|
    of active weights), never beyond a layer's free capacity; sums to `total` exactly."""
    score_sum = sum(layer_scores.values())
    if score_sum <= 0:
        shares = {n: 1 / len(layer_scores) for n in layer_scores}
    else:
        shares = {n: s / score_sum for n, s in layer_scores.items()}
    total = min(total, sum(capacity.values()))
    return apportion({n: total * s for n, s in shares.items()}, capacity, total, floor=0)
