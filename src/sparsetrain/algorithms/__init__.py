"""Sparse-training methods: a typed registry of `MethodSpec`s plus the pure update functions.

A method is data (`MethodSpec`: which grow score, which schedule, dense or not); the update
itself is a pure function of (weights, masks, scores, counts) → masks in `dst.py` and
`pruning.py`. RigL and SET differ only in their grow score.
"""

from sparsetrain.algorithms.dst import (
    drop_lowest_magnitude,
    grow_highest,
    grow_random,
    redistribute,
)
from sparsetrain.algorithms.pruning import global_magnitude_keep
from sparsetrain.algorithms.registry import METHODS, MethodSpec, small_dense_width

__all__ = [
    "METHODS",
    "MethodSpec",
    "drop_lowest_magnitude",
    "global_magnitude_keep",
    "grow_highest",
    "grow_random",
    "redistribute",
    "small_dense_width",
]
