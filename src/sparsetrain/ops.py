"""Selection primitives for drop and grow: exact counts, no sorting, deterministic ties.

`select_lowest(scores, candidates, k)` returns a bool mask with exactly k True entries: the
k candidates with the smallest score. It finds the threshold with `kthvalue` (linear time)
instead of a full sort; entries equal to the threshold are taken in increasing flat-index
order, so ties are broken the same way on every run and every rank.
"""

from __future__ import annotations

import torch


def select_lowest(scores: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask (shape of `scores`) of the k candidates with the lowest scores."""
    flat = scores.reshape(-1).float()
    cand = candidates.reshape(-1)
    if k <= 0:
        return torch.zeros_like(cand).view_as(candidates)
    n_cand = int(cand.sum())
    if k >= n_cand:
        return cand.clone().view_as(candidates)
    vals = flat.masked_fill(~cand, float("inf"))
    threshold = vals.kthvalue(k).values
    below = vals < threshold
    ties = (vals == threshold) & cand
    need = k - below.sum()
    chosen = below | (ties & (ties.cumsum(0) <= need))
    return chosen.view_as(candidates)


def select_highest(scores: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k candidates with the highest scores (ties: lower index first)."""
    return select_lowest(-scores.float(), candidates, k)


def group_scores(scores: torch.Tensor, group: int) -> torch.Tensor:
    """Sum scores over groups of `group` consecutive entries (a k×k kernel when structured)."""
    return scores.reshape(-1, group).sum(1) if group > 1 else scores.reshape(-1)


def expand_groups(unit_mask: torch.Tensor, group: int, shape: torch.Size) -> torch.Tensor:
    """Inverse of `group_scores` for masks: one bool per group → a full-shape mask."""
    if group > 1:
        unit_mask = unit_mask.reshape(-1, 1).expand(-1, group)
    return unit_mask.reshape(shape)
