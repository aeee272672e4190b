import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsetrain.ops import expand_groups, group_scores, select_highest, select_lowest


def test_select_lowest_exact_k_among_candidates():
    scores = torch.tensor([5.0, 1.0, 3.0, 0.5, 2.0, 4.0, 0.1, 9.0])
    cand = torch.tensor([1, 1, 1, 0, 1, 1, 0, 1], dtype=torch.bool)
    # candidates' scores: 5,1,3,2,4,9 at 0,1,2,4,5,7 → two lowest: idx1 (1.0) and idx4 (2.0)
    assert select_lowest(scores, cand, 2).nonzero().flatten().tolist() == [1, 4]


def test_ties_go_to_lower_index():
    scores = torch.ones(8)
    cand = torch.tensor([0, 1, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
    assert select_lowest(scores, cand, 3).nonzero().flatten().tolist() == [1, 2, 3]
    assert select_highest(scores, cand, 2).nonzero().flatten().tolist() == [1, 2]


def test_k_zero_and_k_all():
    cand = torch.tensor([1, 0, 1], dtype=torch.bool)
    assert not select_lowest(torch.randn(3), cand, 0).any()
    assert torch.equal(select_lowest(torch.randn(3), cand, 5), cand)


def test_group_roundtrip():
    scores = torch.arange(12.0).reshape(2, 2, 1, 3)
    assert group_scores(scores, 3).tolist() == [3.0, 12.0, 21.0, 30.0]
    unit = torch.tensor([True, False, False, True])
    full = expand_groups(unit, 3, scores.shape)
    assert full.shape == scores.shape and int(full.sum()) == 6


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-3, 3), min_size=1, max_size=40),
    st.data(),
)
def test_select_lowest_matches_stable_sort(values, data):
    """Property: same choice as a stable sort of (score, index) over the candidates."""
    scores = torch.tensor(values, dtype=torch.float32)
    cand = torch.tensor(
        data.draw(st.lists(st.booleans(), min_size=len(values), max_size=len(values)))
    )
    k = data.draw(st.integers(0, len(values)))
    chosen = select_lowest(scores, cand, k)
    order = sorted((v, i) for i, v in enumerate(values) if cand[i])
    expected = sorted(i for _, i in order[:k])
    assert chosen.nonzero().flatten().tolist() == expected
