import contextlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsetrain import kernels
from sparsetrain.algorithms.dst import (
    drop_lowest,
    drop_lowest_magnitude,
    grow_highest,
    grow_highest_units,
)
from sparsetrain.ops import (
    abs_at,
    apply_index_changes,
    best_positions,
    drop_lowest_abs,
    expand_groups,
    group_scores,
    random_positions,
    select_highest,
    select_lowest,
    split_positions,
    stream_seeds,
    where_flag,
    without,
)

#: both implementations of every selection: the numba kernel (CPU default) and PyTorch's
#: operators (CUDA, or no numba)
BACKENDS = [
    pytest.param(
        True, id="kernel", marks=pytest.mark.skipif(kernels.numba is None, reason="numba")
    ),
    pytest.param(False, id="torch"),
]


@contextlib.contextmanager
def backend(kernel: bool):
    saved, kernels.enabled = kernels.enabled, kernel
    try:
        yield
    finally:
        kernels.enabled = saved


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


def _reference_choice(values: torch.Tensor, cand: torch.Tensor, k: int, largest: bool) -> list:
    """The k best candidates by a stable sort of (score, index): the definition of the result."""
    idx = cand.nonzero().flatten()
    key = -values[idx] if largest else values[idx]
    order = torch.sort(key, stable=True).indices  # stable: equal scores keep index order
    return sorted(idx[order[:k]].tolist())


@settings(max_examples=40, deadline=None)
@given(
    words=st.integers(5_000, 18_750),  # n = 8 x words (+ 5): above the bracket's threshold
    ragged=st.booleans(),  # a length that is not a whole number of 8-byte words
    levels=st.sampled_from([3, 50, 10_000, 0]),  # 0: continuous scores; else heavy ties
    cand_fraction=st.sampled_from([0.05, 0.3, 0.9, 1.0]),
    k_fraction=st.one_of(st.sampled_from([0.001, 0.004, 0.02, 0.5]), st.floats(0.0, 1.0)),
    largest=st.booleans(),
    seed=st.integers(0, 2**16),
)
@pytest.mark.parametrize("kernel", BACKENDS)
def test_large_selection_matches_stable_sort(
    kernel, words, ragged, levels, cand_fraction, k_fraction, largest, seed
):
    """The fast paths (compaction, sampled bracket, one- and two-sided, histogram, sparse
    nonzero) give exactly the stable-sort choice, ties included, on layers large enough to
    take them, in both implementations."""
    n = 8 * words + (5 if ragged else 0)
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(n, generator=g)
    if levels:
        values = (values * levels).floor()
    cand = torch.rand(n, generator=g) < cand_fraction
    k = int(k_fraction * int(cand.sum()))
    select = select_highest if largest else select_lowest
    with backend(kernel):
        chosen = select(values, cand, k).nonzero().flatten().tolist()
    assert chosen == _reference_choice(values, cand, k, largest)


@pytest.mark.parametrize("kernel", BACKENDS)
@pytest.mark.parametrize("k", [1, 7, 300, 4_000, 30_000])
def test_best_positions_with_index_ranks_ties_by_index(k, kernel):
    """Index form (`drop_lowest`): a gathered array ranks ties by the flat layer index, so it
    chooses exactly what the mask form chooses over the whole layer."""
    g = torch.Generator().manual_seed(k)
    n = 100_000
    magnitude = (torch.rand(n, generator=g) * 20).floor()  # many ties
    active = torch.randperm(n, generator=g)[: n // 2]  # any order
    with backend(kernel):
        dropped, kept = drop_lowest(magnitude[active], active, k)
    cand = torch.zeros(n, dtype=torch.bool)
    cand[active] = True
    assert sorted(dropped.tolist()) == _reference_choice(magnitude, cand, k, largest=False)
    assert sorted(kept.tolist() + dropped.tolist()) == sorted(active.tolist())


@pytest.mark.parametrize("kernel", BACKENDS)
def test_drop_lowest_abs_by_hand(kernel):
    """The controller's drop (gather |w|, select, split in one call), worked by hand."""
    weight = torch.tensor([0.5, -0.1, 0.0, 0.8, math.nan, -0.3, 0.2, -0.2])
    active = torch.tensor([7, 0, 1, 3, 4, 5, 6])  # any order; index 2 inactive
    with backend(kernel):
        # |w| at 7,0,1,3,4,5,6: .2 .5 .1 .8 nan .3 .2 -> the lowest two: 1 (.1), then one of
        # the tie at .2, which goes to the lower index 6, not 7; outputs keep `active`'s order
        dropped, kept = drop_lowest_abs(weight, active, 2)
        assert dropped.tolist() == [1, 6] and kept.tolist() == [7, 0, 3, 4, 5]
        dropped, kept = drop_lowest_abs(weight, active, 3)
        assert dropped.tolist() == [7, 1, 6] and kept.tolist() == [0, 3, 4, 5]
        # NaN ranks as the largest magnitude: dropped last
        assert drop_lowest_abs(weight, active, 6)[1].tolist() == [4]


@settings(max_examples=30, deadline=None)
@given(
    n_active=st.integers(1, 60_000),  # above and below the bracket's threshold
    levels=st.sampled_from([0, 3, 50]),  # 0: continuous magnitudes; else heavy ties
    k_fraction=st.one_of(st.sampled_from([0.0, 0.01, 0.3, 0.5, 1.0]), st.floats(0.0, 1.0)),
    specials=st.booleans(),  # NaN and inf weights
    double=st.booleans(),
    seed=st.integers(0, 2**16),
)
@pytest.mark.parametrize("kernel", BACKENDS)
def test_drop_lowest_abs_matches_stable_sort(
    kernel, n_active, levels, k_fraction, specials, double, seed
):
    """The fused drop chooses exactly the stable sort of (|w|, index) among the active
    weights, NaN ranking with +inf, and keeps both outputs in the order of `active`."""
    g = torch.Generator().manual_seed(seed)
    n = 2 * n_active
    weight = torch.randn(n, generator=g, dtype=torch.float64 if double else torch.float32)
    if levels:
        weight = (weight * levels).round()
    if specials:
        weight[torch.rand(n, generator=g) < 0.01] = math.nan
        weight[torch.rand(n, generator=g) < 0.01] = -math.inf
    active = torch.randperm(n, generator=g)[:n_active]
    k = int(k_fraction * n_active)
    with backend(kernel):
        dropped, kept = drop_lowest_abs(weight, active, k)
    cand = torch.zeros(n, dtype=torch.bool)
    cand[active] = True
    magnitude = weight.abs().nan_to_num(nan=math.inf)
    assert sorted(dropped.tolist()) == _reference_choice(magnitude, cand, k, largest=False)
    order = {int(i): j for j, i in enumerate(active)}
    for part in (dropped.tolist(), kept.tolist()):
        assert [order[i] for i in part] == sorted(order[i] for i in part)
    assert len(kept) + len(dropped) == n_active


@pytest.mark.skipif(kernels.numba is None, reason="numba")
def test_fused_drop_exact_when_the_sample_misses_the_kth():
    """Sampled magnitudes that are all outliers bracket the k-th far too high: the fused
    drop must rank every active weight instead (its fallback)."""
    n, sample, k = 20_000, 128, 10_000
    stride = kernels._prime_at_least(n // sample)
    g = torch.Generator().manual_seed(1)
    weight = torch.rand(n, generator=g, dtype=torch.float64)
    weight[stride // 2 :: stride] = 5.0 + torch.rand(
        weight[stride // 2 :: stride].shape, generator=g, dtype=torch.float64
    )
    active = torch.arange(n)
    dropped, _ = kernels.drop_lowest_abs(weight, active, k, sample)
    assert torch.equal(dropped, torch.sort(weight, stable=True).indices[:k].sort().values)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), alpha=st.floats(0.01, 0.6), structured=st.booleans())
@pytest.mark.parametrize("kernel", BACKENDS)
def test_index_form_equals_mask_form(kernel, seed, alpha, structured):
    """The controller's index form and the documented mask form of one RigL update agree."""
    g = torch.Generator().manual_seed(seed)
    shape = (64, 32, 3, 3)
    group = 9 if structured else 1
    weight = torch.randn(shape, generator=g)
    grad = torch.randn(shape, generator=g).abs()
    units = weight.numel() // group
    unit_mask = torch.rand(units, generator=g) < 0.2
    mask = expand_groups(unit_mask, group, shape)
    k = round(alpha * int(unit_mask.sum()))
    stack = contextlib.ExitStack()
    stack.enter_context(backend(kernel))
    # mask form
    kept_mask = drop_lowest_magnitude(weight * mask, mask, k, group)
    new_mask = grow_highest(grad, kept_mask, k, group)
    # index form
    active = unit_mask.nonzero().flatten()
    magnitude = group_scores((weight * mask).abs(), group).index_select(0, active)
    dropped, kept = drop_lowest(magnitude, active, k)
    grown = grow_highest_units(group_scores(grad, group), without(unit_mask, dropped), k)
    stack.close()
    new_units = torch.zeros(units, dtype=torch.bool)
    new_units[torch.cat([kept, grown])] = True
    assert torch.equal(expand_groups(new_units, group, shape), new_mask)
    assert int(new_units.sum()) == int(unit_mask.sum())


@pytest.mark.parametrize("kernel", BACKENDS)
@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("n", [1_000, 200_000])
def test_absolute_ranks_magnitudes_and_nan_ranks_last(kernel, largest, n):
    """`absolute=True` ranks |values| without a copy; NaN never beats a number."""
    g = torch.Generator().manual_seed(n)
    values = torch.randn(n, generator=g)
    values[:: n // 10] = math.nan
    cand = torch.rand(n, generator=g) < 0.7
    k = n // 20
    with backend(kernel):
        chosen = best_positions(values, k, largest=largest, candidates=cand, absolute=True).tolist()
    magnitude = values.abs().nan_to_num(nan=-math.inf if largest else math.inf)
    assert chosen == _reference_choice(magnitude, cand, k, largest)
    assert not values[chosen].isnan().any()


@pytest.mark.parametrize("kernel", BACKENDS)
@pytest.mark.parametrize("n", [1_000, 200_000])
@pytest.mark.parametrize("count_given", [True, False])
def test_exclude_selects_among_the_false_entries(kernel, n, count_given):
    """`exclude=True` (the grow, given the kept units' mask) chooses exactly what the
    complement as `candidates` chooses, and leaves the mask untouched."""
    g = torch.Generator().manual_seed(n)
    values = (torch.randn(n, generator=g) * 4).round()  # ties
    kept = torch.rand(n, generator=g) < 0.8
    before = kept.clone()
    n_cand = int((~kept).sum()) if count_given else None
    with backend(kernel):
        for k in (0, 1, n // 50, int((~kept).sum()) - 1, int((~kept).sum())):
            got = best_positions(
                values, k, largest=True, candidates=kept, exclude=True, n_candidates=n_cand
            )
            assert got.tolist() == _reference_choice(values, ~kept, k, largest=True)
    assert torch.equal(kept, before)


@pytest.mark.parametrize("kernel", BACKENDS)
def test_index_helpers_match_their_definitions(kernel):
    g = torch.Generator().manual_seed(0)
    values = torch.randperm(50_000, generator=g)  # distinct indices, any order
    positions = torch.randperm(values.numel(), generator=g)[:7_000]
    flags = torch.rand(50_000, generator=g) < 0.3
    weight = torch.randn(50_000, generator=g)
    with backend(kernel):
        taken, rest = split_positions(values, positions)
        kept_true = where_flag(values, flags, True)
        kept_false = where_flag(values, flags, False)
        magnitude = abs_at(weight, values)
    chosen = torch.zeros(values.numel(), dtype=torch.bool)
    chosen[positions] = True
    assert torch.equal(taken, values[chosen]) and torch.equal(rest, values[~chosen])
    assert torch.equal(kept_true, values[flags[values]])
    assert torch.equal(kept_false, values[~flags[values]])
    assert torch.equal(magnitude, weight[values].abs())


@pytest.mark.parametrize("kernel", BACKENDS)
def test_random_positions_uniform_exact_and_deterministic(kernel):
    """SET's grow: exactly k distinct candidates, ascending, a function of the generator
    state, and every candidate equally likely (a 5-sigma frequency check)."""
    cand = torch.tensor([1, 0, 1, 1, 0, 1, 1, 0, 1, 1], dtype=torch.bool)
    trials, k = 4_000, 3
    counts = torch.zeros(cand.numel())
    g = torch.Generator().manual_seed(0)
    with backend(kernel):
        for _ in range(trials):
            picked = random_positions(cand, k, g)
            assert picked.numel() == k and bool(cand[picked].all())
            assert picked.tolist() == sorted(set(picked.tolist()))
            counts[picked] += 1
        again = random_positions(cand, k, torch.Generator().manual_seed(7))
        assert torch.equal(again, random_positions(cand, k, torch.Generator().manual_seed(7)))
        big = torch.rand(300_000, generator=g) < 0.9
        many = random_positions(big, 20_000, g)
    p = k / int(cand.sum())
    expected, sigma = trials * p, math.sqrt(trials * p * (1 - p))
    assert (counts[~cand] == 0).all()
    assert ((counts[cand] - expected).abs() < 5 * sigma).all(), counts
    assert many.numel() == 20_000 and bool(big[many].all())
    assert bool((many[1:] > many[:-1]).all())  # ascending, hence distinct


@pytest.mark.parametrize("kernel", BACKENDS)
def test_random_positions_from_a_seed_leave_the_generator_alone(kernel):
    """A `seed` replaces the generator (one number of it serves a whole update): the draws
    are a function of the seed alone, and the generator is not advanced."""
    cand = torch.rand(50_000, generator=torch.Generator().manual_seed(3)) < 0.7
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    with backend(kernel):
        a = random_positions(cand, 1000, g, seed=12345)
        b = random_positions(cand, 1000, torch.Generator().manual_seed(9), seed=12345)
        c = random_positions(cand, 1000, g, seed=54321)
    assert torch.equal(g.get_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c) and bool(cand[a].all())


def test_stream_seeds_are_deterministic_distinct_and_in_range():
    seeds = stream_seeds(7, 1000)
    assert seeds == stream_seeds(7, 1000) and seeds[:10] == stream_seeds(7, 10)
    assert len(set(seeds)) == 1000 and all(0 <= s < 1 << 62 for s in seeds)
    assert stream_seeds(8, 1000) != seeds


def test_counter_based_draws_are_uniform_and_raise_when_too_few_are_free():
    """The kernels' SET draws (splitmix64 of a counter, mapped to [0, n) without bias):
    single draws over a range that is not a power of two pass a chi-square check, a seed
    gives one stream, and asking for more free entries than there are raises."""
    n, trials = 97, 20_000
    counts = torch.zeros(n)
    for seed in range(trials):
        counts[kernels.draw_free(seed * 7919, torch.ones(n, dtype=torch.bool), 1)] += 1
    expected = trials / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < n - 1 + 5 * math.sqrt(2 * (n - 1)), chi2  # mean n-1, sd sqrt(2(n-1))
    free = torch.rand(10_000, generator=torch.Generator().manual_seed(0)) < 0.5
    a, b = free.clone(), free.clone()
    assert torch.equal(kernels.draw_free(5, a, 3000), kernels.draw_free(5, b, 3000))
    assert torch.equal(a, b) and int(a.sum()) == int(free.sum()) - 3000
    with pytest.raises(ValueError, match="fewer free entries"):
        kernels.draw_free(1, torch.zeros(100, dtype=torch.bool), 1)


@pytest.mark.parametrize("kernel", BACKENDS)
def test_random_positions_in_place_draws_the_same_and_clears_the_drawn(kernel):
    """`in_place` (SET's grow: the candidates are scratch) changes no draw: the same seed
    gives the same indices, and exactly those are cleared in the candidates."""
    g = torch.Generator().manual_seed(3)
    cand = torch.rand(200_000, generator=g) < 0.7
    with backend(kernel):
        copied = random_positions(cand, 30_000, torch.Generator().manual_seed(5))
        scratch = cand.clone()
        in_place = random_positions(
            scratch, 30_000, torch.Generator().manual_seed(5), in_place=True
        )
    assert torch.equal(in_place, copied)
    expected = cand.clone()
    expected[copied] = False
    assert torch.equal(scratch, expected)


@pytest.mark.parametrize("kernel", BACKENDS)
@pytest.mark.parametrize("in_place", [True, False])
def test_random_positions_exclude_draws_as_the_complement(kernel, in_place):
    """`exclude` (SET's grow, given the kept units' mask) draws what the complement as
    candidates draws; in place, the kernel marks the drawn units in the mask."""
    g = torch.Generator().manual_seed(4)
    kept = torch.rand(100_000, generator=g) < 0.6
    with backend(kernel):
        want = random_positions(~kept, 20_000, torch.Generator().manual_seed(9))
        scratch = kept.clone()
        got = random_positions(
            scratch, 20_000, torch.Generator().manual_seed(9), in_place=in_place, exclude=True
        )
    assert torch.equal(got, want) and not bool(kept[got].any())
    if kernel and in_place:
        assert torch.equal(scratch, kept.index_fill(0, got, True))
    elif not in_place:
        assert torch.equal(scratch, kept)


@pytest.mark.parametrize("kernel", BACKENDS)
def test_apply_index_changes_by_hand(kernel):
    before = torch.tensor([1, 1, 0, 1, 0, 0, 1, 0], dtype=torch.bool)
    ever = torch.tensor([1, 1, 1, 1, 0, 0, 1, 0], dtype=torch.bool)
    dropped, grown = torch.tensor([1, 6]), torch.tensor([1, 2, 5])  # 1 dropped and regrown
    with backend(kernel):
        after = without(before, dropped)
        assert after.int().tolist() == [1, 0, 0, 1, 0, 0, 0, 0]
        gone, fresh, first_time = apply_index_changes(before, after, dropped, grown, ever)
    assert after.int().tolist() == [1, 1, 1, 1, 0, 1, 0, 0]
    assert gone.tolist() == [6] and fresh.tolist() == [2, 5] and first_time.tolist() == [5]
    assert ever.int().tolist() == [1, 1, 1, 1, 0, 1, 1, 0]
    assert before.int().tolist() == [1, 1, 0, 1, 0, 0, 1, 0]  # not edited in place


@pytest.mark.skipif(kernels.numba is None, reason="numba")
def test_kernel_selection_exact_when_the_sample_misses_the_kth():
    """A strided sample that sees only outliers brackets the k-th best far too high: the
    kernel must fall back to every candidate (regression: it built its histogram from the
    missed bound, picked wrong entries and could write out of bounds)."""
    n, sample, k = 10_000, 128, 500
    stride = kernels._prime_at_least(n // sample)
    g = torch.Generator().manual_seed(0)
    values = torch.rand(n, generator=g, dtype=torch.float64) * 0.5
    sampled = values[stride // 2 :: stride]
    sampled.copy_(1.0 + torch.rand(sampled.shape, generator=g, dtype=torch.float64))
    got = kernels.best_positions(values, k, True, False, None, n, None, sample)
    want = torch.sort(-values, stable=True).indices[:k].sort().values
    assert torch.equal(got, want)
