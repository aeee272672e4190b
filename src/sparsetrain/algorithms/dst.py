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

import math
from collections.abc import Mapping

import torch

from sparsetrain.distributions import apportion
from sparsetrain.ops import (
    best_positions,
    expand_groups,
    group_scores,
    random_positions,
    split_positions,
)


def _units(mask: torch.Tensor, group: int) -> torch.Tensor:
    return mask.reshape(-1, group)[:, 0] if group > 1 else mask.reshape(-1)


def _unit_mask(n_units: int, index: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(n_units, dtype=torch.bool, device=index.device)
    mask[index] = True
    return mask


# ----------------------------------------------------------------- index form
# What the controller runs: the drop touches only the active units, the grow makes one pass
# over the scores and the mask of the kept units. Units are weights, or k×k kernels when
# structured; indices are flat unit indices. The mask form below gives the same selections
# as bool masks.
def drop_lowest(
    active_scores: torch.Tensor, active: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dropped, kept): the k active units with the lowest score, and the rest.

    `active` holds the active units' indices and `active_scores` their scores (|w|, summed
    per kernel when structured); ties go to the lower unit index. Both results keep the order
    of `active` (ascending in, ascending out)."""
    return split_positions(active, best_positions(active_scores, k, largest=False, index=active))


def grow_highest_units(
    scores: torch.Tensor,
    kept: torch.Tensor,
    k: int,
    absolute: bool = False,
    n_kept: int | None = None,
) -> torch.Tensor:
    """Ascending indices of the k units not `kept` (a 1-D bool unit mask; `n_kept`: its
    number of True entries, if known) with the highest score (1-D, one per unit; |score| if
    `absolute`); ties go to the lower unit index."""
    n_cand = None if n_kept is None else kept.numel() - n_kept
    return best_positions(
        scores,
        k,
        largest=True,
        candidates=kept,
        exclude=True,
        n_candidates=n_cand,
        absolute=absolute,
    )


def grow_random_units(
    kept: torch.Tensor,
    k: int,
    generator: torch.Generator | None = None,
    n_kept: int | None = None,
    in_place: bool = False,
    seed: int | None = None,
) -> torch.Tensor:
    """Indices of k units drawn uniformly from those not `kept` (a 1-D bool unit mask; SET's
    grow). With `in_place` the drawn units may also be set in `kept` (scratch); a `seed`
    replaces `generator` (`ops.random_positions`)."""
    n_cand = None if n_kept is None else kept.numel() - n_kept
    return random_positions(
        kept, k, generator, n_candidates=n_cand, in_place=in_place, exclude=True, seed=seed
    )


# ----------------------------------------------------------------- mask form
def drop_lowest_magnitude(
    weight: torch.Tensor, mask: torch.Tensor, k: int, group: int = 1
) -> torch.Tensor:
    """The mask after removing the k active units with the smallest magnitude.

    A hand-worked layer of 8 weights, 5 active; drop k = 2.

    Examples:
        >>> import torch
        >>> w = torch.tensor([0.5, -0.1, 0.0, 0.8, 0.0, -0.3, 0.0, 0.2])
        >>> kept = drop_lowest_magnitude(w, w != 0, 2)  # |-0.1| and |0.2| are the smallest
        >>> kept.int().tolist()
        [1, 0, 0, 1, 0, 1, 0, 0]
    """
    active = _units(mask, group).nonzero().squeeze(1)
    scores = group_scores(weight.detach().abs(), group)[active]
    _, kept = drop_lowest(scores, active, k)
    return expand_groups(_unit_mask(mask.numel() // group, kept), group, mask.shape)


def grow_highest(
    grow_score: torch.Tensor, kept: torch.Tensor, k: int, group: int = 1
) -> torch.Tensor:
    """The mask after adding the k inactive units (w.r.t. `kept`) with the highest score.

    Continuing the example of `drop_lowest_magnitude`: RigL grows where |gradient| is largest
    among the 5 connections not kept (SET would pass a random score instead).

    Examples:
        >>> import torch
        >>> kept = torch.tensor([1, 0, 0, 1, 0, 1, 0, 0], dtype=torch.bool)
        >>> grad = torch.tensor([0.0, 0.9, 0.7, 0.0, 0.1, 0.0, 0.2, 0.3])
        >>> grow_highest(grad.abs(), kept, 2).int().tolist()  # index 1 was just dropped: regrown
        [1, 1, 1, 1, 0, 1, 0, 0]
    """
    kept_units = _units(kept, group)
    grown = grow_highest_units(group_scores(grow_score, group), kept_units, k)
    new = kept_units.clone()
    new[grown] = True
    return expand_groups(new, group, kept.shape)


def grow_random(
    kept: torch.Tensor, k: int, generator: torch.Generator | None = None, group: int = 1
) -> torch.Tensor:
    """SET's grow: `grow_highest` with i.i.d. uniform scores, i.e. k units drawn uniformly
    from those not kept. Drawn directly (about k random numbers instead of one per weight)."""
    kept_units = _units(kept, group)
    grown = grow_random_units(kept_units, k, generator)
    new = kept_units.clone()
    new[grown] = True
    return expand_groups(new, group, kept.shape)


def redistribute(
    total: int, layer_scores: Mapping[str, float], capacity: Mapping[str, int]
) -> dict[str, int]:
    """SNFS redistribution: split `total` regrowth across layers ∝ their score (mean |momentum|
    of active weights), never beyond a layer's free capacity; sums to `total` exactly.

    Examples:
        >>> redistribute(10, {"a": 3.0, "b": 1.0}, {"a": 100, "b": 100})
        {'a': 8, 'b': 2}
        >>> redistribute(10, {"a": 3.0, "b": 1.0}, {"a": 5, "b": 100})  # a has room for 5 only
        {'a': 5, 'b': 5}
    """
    # summed in order, as the CPU jobs' copy (`kernels._redistribute`) does; not `sum`,
    # which compensates on Python >= 3.12
    score_sum = 0.0
    for score in layer_scores.values():
        score_sum += score
    if not 0 < score_sum < math.inf:  # no momentum yet, or a non-finite one: equal shares
        shares = {n: 1 / len(layer_scores) for n in layer_scores}
    else:
        shares = {n: s / score_sum for n, s in layer_scores.items()}
    total = min(total, sum(capacity.values()))
    return apportion({n: total * s for n, s in shares.items()}, capacity, total, floor=0)
