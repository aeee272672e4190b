"""Global magnitude pruning (Zhu & Gupta): keep the largest |w| across all layers at once."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sparsetrain.ops import select_highest


def global_magnitude_keep(
    weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], keep: int
) -> dict[str, torch.Tensor]:
    """New masks keeping exactly `keep` currently-active weights, those with the largest |w|
    over all layers together. Each layer keeps at least its largest weight, so no layer is
    cut off entirely (the explicit one-weight-per-layer minimum).

    Examples:
        >>> import torch
        >>> w = {"a": torch.tensor([0.9, 0.1, 0.5]), "b": torch.tensor([0.2, 0.05])}
        >>> m = {n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()}
        >>> {n: k.int().tolist() for n, k in global_magnitude_keep(w, m, 3).items()}
        {'a': [1, 0, 1], 'b': [1, 0]}
    """
    names = list(weights)
    flat_scores = torch.cat([weights[n].detach().abs().reshape(-1).float() for n in names])
    flat_active = torch.cat([masks[n].reshape(-1) for n in names])
    sizes = [weights[n].numel() for n in names]
    # reserve each layer's largest active weight, then fill the rest globally
    reserved = torch.zeros_like(flat_active)
    offset = 0
    for size in sizes:
        scores = flat_scores[offset : offset + size].masked_fill(
            ~flat_active[offset : offset + size], -1
        )
        reserved[offset + int(scores.argmax())] = True
        offset += size
    rest = select_highest(flat_scores, flat_active & ~reserved, keep - int(reserved.sum()))
    kept = (reserved | rest).split(sizes)
    return {n: k.view_as(masks[n]) for n, k in zip(names, kept)}
