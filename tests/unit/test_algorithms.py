"""Hand-worked drop/grow on an 8-element layer: the next mask is written out by hand."""

import math

import pytest
import torch

from sparsetrain.algorithms import (
    METHODS,
    drop_lowest_magnitude,
    global_magnitude_keep,
    grow_highest,
    redistribute,
)

W = torch.tensor([0.9, -0.1, 0.0, 0.5, 0.0, 0.0, -0.3, 0.0])
MASK = torch.tensor([1, 1, 0, 1, 0, 0, 1, 0], dtype=torch.bool)


def idx(mask):
    return mask.nonzero().flatten().tolist()


def test_rigl_update_by_hand():
    # drop k=2 smallest |w| among active {0:.9, 1:.1, 3:.5, 6:.3} -> drop 1 and 6, keep {0, 3}
    kept = drop_lowest_magnitude(W, MASK, 2)
    assert idx(kept) == [0, 3]
    # grow k=2 highest |grad| among not-kept {1,2,4,5,6,7}: 2 (.8) and 5 (.7)
    grad = torch.tensor([0.0, 0.2, 0.8, 0.0, 0.1, 0.7, 0.05, 0.3])
    assert idx(grow_highest(grad.abs(), kept, 2)) == [0, 2, 3, 5]


def test_rigl_can_regrow_just_dropped_connection():
    # reference semantics: candidates are all connections not kept, so a dropped one may return
    kept = drop_lowest_magnitude(W, MASK, 2)
    grad = torch.tensor([0.0, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1])
    assert idx(grow_highest(grad, kept, 2)) == [0, 1, 3, 7]


def test_set_update_by_hand():
    # SET differs from RigL only by its grow score: uniform random numbers
    kept = drop_lowest_magnitude(W, MASK, 1)  # drops index 1 (|w| = .1)
    assert idx(kept) == [0, 3, 6]
    random_scores = torch.tensor([0.5, 0.6, 0.1, 0.2, 0.95, 0.3, 0.4, 0.7])
    assert idx(grow_highest(random_scores, kept, 1)) == [0, 3, 4, 6]


def test_structured_drop_and_grow_whole_kernels():
    w = torch.tensor([[[[3.0, 3.0], [3.0, 3.0]], [[0.1, 0.1], [0.1, 0.1]], [[0.0] * 2] * 2]])
    mask = torch.tensor([[[[1, 1], [1, 1]], [[1, 1], [1, 1]], [[0, 0], [0, 0]]]], dtype=torch.bool)
    kept = drop_lowest_magnitude(w, mask, 1, group=4)  # drops the whole 0.1 kernel
    assert kept[0, 1].sum() == 0 and kept[0, 0].all()
    grown = grow_highest(torch.ones_like(w), kept, 1, group=4)  # tie -> lower kernel index
    assert grown[0, 1].all() and not grown[0, 2].any()


def test_redistribute_proportional_and_exact():
    counts = redistribute(10, {"a": 3.0, "b": 1.0, "c": 1.0}, {"a": 100, "b": 100, "c": 100})
    assert counts == {"a": 6, "b": 2, "c": 2}
    capped = redistribute(10, {"a": 9.0, "b": 1.0}, {"a": 3, "b": 100})
    assert capped == {"a": 3, "b": 7}


@pytest.mark.parametrize("bad", [0.0, math.inf, math.nan])
def test_redistribute_gives_equal_shares_without_a_usable_score_sum(bad):
    """No momentum yet (all 0), or a non-finite score: equal shares, not an error (a NaN
    score used to reach `math.floor` and raise)."""
    scores = {"a": bad, "b": 0.0 if bad == 0 else 1.0}
    assert redistribute(10, scores, {"a": 100, "b": 100}) == {"a": 5, "b": 5}


def test_global_magnitude_keeps_largest_across_layers_and_one_per_layer():
    weights = {"a": torch.tensor([5.0, 4.0, 3.0]), "b": torch.tensor([0.1, 0.2])}
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    kept = global_magnitude_keep(weights, masks, 3)
    # b's largest (0.2) is reserved, then the two largest remaining overall: 5 and 4
    assert idx(kept["a"]) == [0, 1] and idx(kept["b"]) == [1]


def test_registry_names_and_specs():
    assert set(METHODS.names()) == {
        "Dense", "Small_Dense", "Static", "SET", "SNFS", "RigL", "RigL_reinit", "Pruning", "Lottery"
    }  # fmt: skip
    assert METHODS.get("RigL").dense_gradients == "at_update"
    assert METHODS.get("SNFS").dense_gradients == "every_step"
    assert METHODS.get("SET").dense_gradients == "never"
    assert METHODS.get("Small-Dense").dense_model
