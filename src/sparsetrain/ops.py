"""Selection primitives for drop and grow: exact counts, no sorting, deterministic ties.

`select_lowest(scores, candidates, k)` returns a bool mask with exactly k True entries: the
k candidates with the smallest score (`select_highest`: the largest). Entries equal to the k-th
score (the threshold) are taken in increasing flat-index order, so ties are broken the same way
on every run and every rank.

Speed (a mask update must cost less than a training step): a full sort, or `kthvalue` /
`topk` over a whole layer, costs tens of milliseconds per million weights on a CPU. Instead:

- few candidates (a drop among the active weights of a sparse layer): they are gathered into
  a compact array first, and everything below runs on that;
- the threshold is bracketed from an evenly strided sample of the scores; one comparison
  pass marks the entries inside the bracket (and, when k is a large part of the layer, a
  second counts those certainly chosen), and the exact k-th score is taken among the few
  marked entries only.

The sample affects the speed, never the result: when the bracket misses (rare), the whole
candidate set is used. No random stream is consumed.

`select_random(candidates, k, generator)` draws a uniformly random k-subset of the candidates
from about k random numbers (not one per weight).

`csr_linear(x, weight, bias, CSRPattern(mask))` is a Linear layer on `torch.sparse` CSR kernels
in forward and backward (the controller's `sparse_kernels` option).
"""

from __future__ import annotations

import math
import warnings

import torch

from sparsetrain import kernels

#: below this many scores the threshold is taken directly over all candidates
_DIRECT_BELOW = 1 << 15
#: sampled scores for the bracket
SELECTION_SAMPLE = 1 << 13
#: one-sided bracket when k * ratio < number of scores (an exact k-th over ~k entries is
#: cheaper than one more pass over all of them)
_ONE_SIDED_RATIO = 20
#: candidates are compacted first when they are at most this part of the scores
_COMPACT_BELOW = 0.25


def select_lowest(scores: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask (shape of `scores`) of the k candidates with the lowest scores.

    Examples:
        >>> import torch
        >>> scores = torch.tensor([0.5, 0.1, 0.1, 0.0])
        >>> candidates = torch.tensor([True, True, True, False])  # index 3 is not a candidate
        >>> select_lowest(scores, candidates, 2).tolist()
        [False, True, True, False]
        >>> select_lowest(torch.ones(4), torch.ones(4, dtype=torch.bool), 2).tolist()  # ties: lower index
        [True, True, False, False]
    """
    return _select(scores, candidates, k, largest=False)


def select_highest(scores: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k candidates with the highest scores (ties: lower index first).

    Examples:
        >>> import torch
        >>> select_highest(torch.tensor([0.5, 0.1, 0.9]), torch.ones(3, dtype=torch.bool), 1).tolist()
        [False, False, True]
    """
    return _select(scores, candidates, k, largest=True)


def _select(scores: torch.Tensor, candidates: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    flat = scores.reshape(-1)
    if not flat.is_floating_point():
        flat = flat.float()
    cand = candidates.reshape(-1)
    n_cand = int(torch.count_nonzero(cand))
    if n_cand <= _COMPACT_BELOW * flat.numel():  # few candidates: gather them first
        where = cand.nonzero().squeeze(1)  # ascending, so ties still go to the lower index
        chosen = where[best_positions(flat[where], k, largest=largest)]
    else:
        chosen = best_positions(flat, k, largest=largest, candidates=cand, n_candidates=n_cand)
    mask = torch.zeros_like(cand)
    mask[chosen] = True
    return mask.view_as(candidates)


def best_positions(
    values: torch.Tensor,
    k: int,
    *,
    largest: bool,
    index: torch.Tensor | None = None,
    candidates: torch.Tensor | None = None,
    n_candidates: int | None = None,
    absolute: bool = False,
    exclude: bool = False,
) -> torch.Tensor:
    """Ascending positions of the k lowest, or highest, entries of the 1-D `values` (of
    |values| if `absolute`: no copy is made on CPU), among the True entries of `candidates`
    if given, or among its False entries with `exclude` (`n_candidates`: their number, if
    known; `exclude` spares a grow the complement of the mask it excludes).

    Ties at the k-th value go to the lower `index[position]` (default: the lower position), so
    an array gathered at flat indices `index` is ranked exactly as the whole layer would be.
    NaN ranks below every number (a diverged gradient never wins a grow)."""
    n = values.numel()
    if candidates is None:
        n_cand = n
    elif n_candidates is None:
        n_cand = int(torch.count_nonzero(candidates))
        n_cand = n - n_cand if exclude else n_cand
    else:
        n_cand = n_candidates
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=values.device)
    if kernels.usable(values) and k < n_cand:  # one fused pass (numba), not several operators
        return kernels.best_positions(
            values, k, largest, absolute, candidates, n_cand, index, SELECTION_SAMPLE, exclude
        )
    if candidates is not None and exclude:
        candidates = ~candidates
    if k >= n_cand:
        everything = torch.arange(n, device=values.device)
        return everything if candidates is None else everything[candidates]
    if absolute:
        values = values.abs()
    if values.isnan().any():  # NaN ranks below every number, as in the kernel
        values = values.nan_to_num(nan=-math.inf if largest else math.inf)
    bounds = _bracket(values, candidates, k, n_cand, largest)
    chosen, idx, need = _split(values, candidates, k, bounds, largest)
    if not 0 < need <= idx.numel():  # the sample missed the threshold (rare): use all
        chosen, idx, need = _split(values, candidates, k, (None, None), largest)
    # (index_select / masked_select: plain gathers, several times faster than x[index] on CPU)
    tiebreak = None if index is None else index.index_select(0, idx)
    picked = idx.masked_select(_pick(values.index_select(0, idx), need, largest, tiebreak))
    if bounds[0] is not None and need < k:  # two-sided: some were certain beyond the bracket
        picked = torch.cat([chosen.nonzero().squeeze(1), picked])
    return picked.sort().values


def _pick(
    sub: torch.Tensor, need: int, largest: bool, tiebreak: torch.Tensor | None = None
) -> torch.Tensor:
    """Bool mask of the `need` best of `sub` (ascending positions), ties to the lower position
    or, with `tiebreak`, to the lower `tiebreak` value."""
    # the need-th best score is the threshold: all better ones are taken, then ties
    threshold = sub.kthvalue(sub.numel() - need + 1 if largest else need).values
    take = sub > threshold if largest else sub < threshold
    ties = (sub == threshold).nonzero().squeeze(1)
    if tiebreak is not None:
        ties = ties[tiebreak[ties].argsort()]
    take[ties[: need - int(torch.count_nonzero(take))]] = True
    return take


def _split(
    flat: torch.Tensor,
    cand: torch.Tensor | None,
    k: int,
    bounds: tuple[torch.Tensor | None, torch.Tensor | None],
    largest: bool,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(chosen, inside, need): the candidates certainly among the k best (score beyond the
    bracket's better bound), the ascending flat indices of those inside the bracket, and how
    many of these the k best still need. `bounds` = (better bound, worse bound), None = open."""
    sure, edge = bounds
    beyond = torch.gt if largest else torch.lt  # strictly better than a bound
    within = torch.ge if largest else torch.le  # at least as good as a bound
    if edge is None:
        inside = torch.ones_like(flat, dtype=torch.bool) if cand is None else cand.clone()
    else:
        inside = within(flat, edge)
        if cand is not None:
            inside &= cand
    if sure is None:
        return torch.zeros_like(inside), _sparse_nonzero(inside), k
    chosen = beyond(flat, sure)
    if cand is not None:
        chosen &= cand
    inside ^= chosen  # chosen ⊂ inside (the bounds are ordered): what is left is the bracket
    return chosen, _sparse_nonzero(inside), k - int(torch.count_nonzero(chosen))


def _sparse_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Ascending indices of the True entries of a 1-D bool tensor.

    `nonzero` scans every byte (~1.5 ns each on a CPU core). When under ~1% of the entries
    are True (estimated from a strided sample), scanning 8-byte words first and then only the
    bytes of the words holding a True is several times faster."""
    n = mask.numel()
    if n < 1 << 16 or n % 8 or mask.storage_offset() % 8:
        return mask.nonzero().squeeze(1)
    if int(torch.count_nonzero(mask[:: n // 4096])) > 40:  # > ~1%: plain scan
        return mask.nonzero().squeeze(1)
    words = mask.view(torch.int64).nonzero().squeeze(1)
    pos = (words.unsqueeze(1) * 8 + torch.arange(8, device=mask.device)).reshape(-1)
    return pos[mask[pos]]


def split_positions(
    values: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the values at the distinct `positions`, the other values), both in the order of
    `values` (so an ascending index list splits into two ascending ones)."""
    if kernels.usable(values):
        return kernels.split(values, positions)
    chosen = torch.zeros_like(values, dtype=torch.bool).index_fill_(0, positions, True)
    return values.masked_select(chosen), values.masked_select(~chosen)


def abs_at(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """|values[index]| of a 1-D array (a fused gather on CPU)."""
    if kernels.usable(values) and values.is_floating_point():
        return kernels.abs_at(values, index)
    return values.index_select(0, index).abs()


def mean_abs_at(values: torch.Tensor, index: torch.Tensor) -> float:
    """The mean of |values[index]| of a 1-D array, accumulated in float64 (NaN if `index` is
    empty); on CPU one compiled pass, in the order SNFS's layer jobs sum in their drop's gather
    (`kernels._abs_keys`)."""
    if index.numel() == 0:
        return math.nan
    if kernels.usable(values) and values.is_floating_point():
        return kernels.abs_sum_at(values, index) / index.numel()
    return float(values.index_select(0, index).abs().double().mean())


def drop_lowest_abs(
    values: torch.Tensor, index: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dropped, kept): the k entries of the int64 `index` at which the 1-D `values` has the
    smallest magnitude, and the rest, both in `index`'s order. Ties go to the lower index and
    NaN ranks as the largest magnitude (as `best_positions` on the gathered |values|)."""
    if 0 < k < index.numel() and kernels.usable(values) and values.is_floating_point():
        # gather, select and split in one compiled call
        return kernels.drop_lowest_abs(values, index, k, SELECTION_SAMPLE // 2)
    positions = best_positions(abs_at(values, index), k, largest=False, index=index)
    return split_positions(index, positions)


def without(mask: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of the 1-D bool `mask` with the entries at `index` cleared (the
    units a drop keeps: the grow excludes them, then adds its own)."""
    return mask.clone(memory_format=torch.contiguous_format).index_fill_(0, index, False)


def apply_index_changes(
    before: torch.Tensor,
    after: torch.Tensor,
    dropped: torch.Tensor,
    grown: torch.Tensor,
    ever: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gone, fresh, first_time) of one drop-and-grow on a 1-D bool unit mask `before`:
    the dropped units not regrown, the grown units that were inactive, and those of them
    never active before, which are marked in `ever` (the ever-active record: a 1-D unit mask,
    or one row per unit) in place. `after` is `without(before, dropped)` and becomes the new
    mask here (the grown units are set in it). One pass on CPU."""
    if (
        kernels.usable(dropped)
        and ever.dim() == 1
        and before.device.type == "cpu"
        and after.is_contiguous()
    ):
        return kernels.apply_index_changes(before, after, dropped, grown, ever)
    after.index_fill_(0, grown, True)
    gone = where_flag(dropped, after, False)
    fresh = where_flag(grown, before, False)
    first_time = where_flag(fresh, ever if ever.dim() == 1 else ever[:, 0], False)
    ever.index_fill_(0, first_time, True)
    return gone, fresh, first_time


def where_flag(index: torch.Tensor, flags: torch.Tensor, value: bool) -> torch.Tensor:
    """The entries i of the index array `index` with flags[i] == value (flags: 1-D bool),
    in their order."""
    if kernels.usable(index):
        return kernels.where_flag(index, flags, value)
    picked = flags.index_select(0, index)
    return index.masked_select(picked if value else ~picked)


def _prime_at_least(n: int) -> int:
    n = max(n, 2)
    while any(n % d == 0 for d in range(2, math.isqrt(n) + 1)):
        n += 1
    return n


def _bracket(
    flat: torch.Tensor, cand: torch.Tensor | None, k: int, n_cand: int, largest: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(better, worse) score bounds that very likely enclose the k-th best candidate score,
    from an evenly strided sample; None for an open side (both None for small inputs).

    When k is a small part of the scores, the better bound is left open: the exact k-th among
    the ~k entries up to the worse bound is cheaper than one more pass to count beyond it."""
    n = flat.numel()
    if n <= _DIRECT_BELOW:
        return None, None
    # strided (cache-friendly, unlike random gathers), with a prime stride so that it does not
    # alias with a weight matrix's row length (a biased sample costs speed, never correctness)
    stride = _prime_at_least(n // SELECTION_SAMPLE)
    sample = flat[stride // 2 :: stride]
    if cand is not None:
        sample = sample[cand[stride // 2 :: stride]]
    if largest:
        sample = -sample
    m = sample.numel()
    if m < 64:
        return None, None
    # the k-th best lies near rank p*m of the sample; allow 4 binomial standard deviations
    p = k / n_cand
    margin = 4 * math.sqrt(m * p * (1 - p)) + 4
    lo_rank, hi_rank = math.floor(p * m - margin), math.ceil(p * m + margin)
    one_sided = k * _ONE_SIDED_RATIO < n
    better = sample.kthvalue(lo_rank).values if lo_rank >= 1 and not one_sided else None
    worse = sample.kthvalue(hi_rank).values if hi_rank <= m else None
    if largest:  # back from the negated sample
        better = None if better is None else -better
        worse = None if worse is None else -worse
    return better, worse


def select_random(
    candidates: torch.Tensor, k: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Bool mask of k candidates drawn uniformly at random, without replacement.

    The same distribution as `select_highest` of i.i.d. uniform scores, but it draws about
    k random indices (rejecting non-candidates and repeats) instead of one number per entry.
    `generator` is a CPU generator; the result is a function of its state alone.

    Examples:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> cand = torch.tensor([True, False, True, True, False, True])
        >>> chosen = select_random(cand, 2, g)
        >>> int(chosen.sum()), bool((chosen & ~cand).any())
        (2, False)
    """
    cand = candidates.reshape(-1)
    chosen = torch.zeros_like(cand)
    chosen[random_positions(cand, k, generator)] = True
    return chosen.view_as(candidates)


def uniform_draws(
    n: int, n_free: int, wanted: int, generator: torch.Generator | None
) -> torch.Tensor:
    """One round of `random_positions`' draws (the PyTorch path): uniform indices in [0, n),
    enough for about 1.2 times the `wanted` hits among `n_free` free entries."""
    return torch.randint(n, (math.ceil(1.2 * wanted * n / n_free) + 16,), generator=generator)


def random_seed(generator: torch.Generator | None) -> int:
    """A seed in [0, 2^62) for the kernels' counter-based draws (`kernels.draw_free`): one
    number from `generator`, so that the draws are a function of its state."""
    return int(torch.randint(1 << 62, (1,), generator=generator))


def stream_seeds(seed: int, n: int) -> list[int]:
    """n seeds in [0, 2^62) derived from one (splitmix64 of seed + i): one draw from the
    generator serves every layer of an update, instead of one draw (~30 µs) per layer."""
    mask = (1 << 64) - 1
    seeds = []
    for i in range(1, n + 1):
        z = (seed + i * 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        seeds.append((z ^ (z >> 31)) >> 2)
    return seeds


def random_positions(
    candidates: torch.Tensor,
    k: int,
    generator: torch.Generator | None = None,
    n_candidates: int | None = None,
    in_place: bool = False,
    exclude: bool = False,
    seed: int | None = None,
) -> torch.Tensor:
    """Flat indices (ascending) of k candidates drawn uniformly at random, without
    replacement (all of them when k >= their number); see `select_random`. The candidates
    are the True entries of `candidates`, or its False ones with `exclude`. With `in_place`
    the mask is used as scratch instead of being copied (for a caller that no longer needs
    it): its contents afterwards are unspecified (a contiguous mask has the drawn entries
    flipped).

    Uniform draws are accepted in order when they hit a candidate not yet taken: every accepted
    draw is uniform over the free candidates, so the result is a uniform k-subset. On CPU the
    draws come from a counter-based generator seeded by one number of `generator` (the same
    stream whichever thread computes it: the layer jobs of `sparsetrain.openmp` draw inside
    the job); elsewhere from `generator` itself. A `seed` replaces `generator`: the draws are
    then a function of it alone."""
    cand = candidates.reshape(-1)
    n = cand.numel()
    use_kernel = (
        kernels.enabled
        and cand.device.type == "cpu"
        and cand.is_contiguous()
        and n < kernels.MAX_DRAW_RANGE
    )
    if exclude and not use_kernel:
        cand, exclude, in_place = ~cand, False, True
    n_cand = int(torch.count_nonzero(cand)) if n_candidates is None else n_candidates
    n_cand = n - n_cand if exclude and n_candidates is None else n_cand
    if k >= n_cand:
        return (~cand if exclude else cand).nonzero().squeeze(1)
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=cand.device)
    # the candidates not taken yet: one array, so each draw makes one random read
    free = cand if in_place else cand.clone()
    if use_kernel:
        return kernels.draw_free(random_seed(generator) if seed is None else seed, free, k, exclude)
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    picks = []
    remaining = k
    while remaining:
        # each draw hits a still-free candidate with probability (n_cand - taken) / n
        idx = uniform_draws(n, n_cand - (k - remaining), remaining, generator).to(cand.device)
        idx = torch.unique(idx[free[idx]])  # a uniformly random set of free ones, ascending
        if idx.numel() > remaining:  # keep a uniformly random subset of it, in ascending order
            keep = torch.randperm(idx.numel(), generator=generator)[:remaining]
            subset = torch.zeros(idx.numel(), dtype=torch.bool)
            subset[keep] = True
            idx = idx[subset.to(cand.device)]
        free[idx] = False
        picks.append(idx)
        remaining -= idx.numel()
    # ascending: later scatters and gathers at these indices then walk memory in order
    return picks[0] if len(picks) == 1 else torch.cat(picks).sort().values


def group_scores(scores: torch.Tensor, group: int) -> torch.Tensor:
    """Sum scores over groups of `group` consecutive entries (a k×k kernel when structured)."""
    return scores.reshape(-1, group).sum(1) if group > 1 else scores.reshape(-1)


def expand_groups(unit_mask: torch.Tensor, group: int, shape: torch.Size) -> torch.Tensor:
    """Inverse of `group_scores` for masks: one bool per group → a full-shape mask."""
    if group > 1:
        unit_mask = unit_mask.reshape(-1, 1).expand(-1, group)
    return unit_mask.reshape(shape)


# --------------------------------------------------------------------------- CSR Linear kernels
class CSRPattern:
    """The sparsity pattern of one Linear weight as CSR index arrays, for W and for Wᵀ.

    Built once per mask (at mask updates: host work); `matrices(weight)` then gathers the
    current weight values into CSR matrices in O(active) with no host sync."""

    def __init__(self, mask: torch.Tensor):
        out_features, in_features = mask.shape
        self.shape = (out_features, in_features)
        self.flat = mask.reshape(-1).nonzero().squeeze(1)  # row-major: CSR order of W
        flat_t = mask.t().reshape(-1).nonzero().squeeze(1)  # row-major order of Wᵀ
        self.col = self.flat % in_features
        self.col_t = flat_t % out_features
        self.crow = _crow(mask.sum(1))
        self.crow_t = _crow(mask.sum(0))
        # position in W's flat storage of each entry of Wᵀ
        self.flat_t = (flat_t % out_features) * in_features + flat_t // out_features

    def matrices(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, Wᵀ) as CSR tensors holding the current values of `weight` (dense, masked)."""
        flat = weight.reshape(-1)
        return (
            _csr_tensor(self.crow, self.col, flat[self.flat], self.shape),
            _csr_tensor(self.crow_t, self.col_t, flat[self.flat_t], self.shape[::-1]),
        )


def _crow(counts: torch.Tensor) -> torch.Tensor:
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def _csr_tensor(crow, col, values, shape) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


class _CSRLinearFunction(torch.autograd.Function):
    """y = x Wᵀ + b with W = weight ⊙ mask on CSR kernels, forward and backward.

    The weight gradient is computed only at active entries (sampled dense-dense product) and
    scattered into a dense zero tensor for the optimizer, unless `dense_grad` asks for the full
    dense gradient (RigL's grow score, SNFS): then it is the ordinary dense product."""

    @staticmethod
    def forward(ctx, x, weight, bias, pattern: CSRPattern, dense_grad: bool):
        w, w_t = pattern.matrices(weight.detach())
        x2 = x.reshape(-1, pattern.shape[1])
        if bias is None:
            out = torch.mm(w, x2.t())
        else:
            out = torch.addmm(bias.detach().unsqueeze(1), w, x2.t())
        ctx.save_for_backward(x2)
        ctx.csr = (w, w_t)
        ctx.pattern, ctx.dense_grad, ctx.x_shape = pattern, dense_grad, x.shape
        ctx.has_bias = bias is not None
        return out.t().reshape(*x.shape[:-1], pattern.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        (x2,) = ctx.saved_tensors
        w, w_t = ctx.csr
        pattern = ctx.pattern
        g2 = grad_out.reshape(-1, pattern.shape[0])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(w_t, g2.t()).t().reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            if ctx.dense_grad:
                grad_w = torch.mm(g2.t(), x2)
            else:
                values = torch.sparse.sampled_addmm(w, g2.t(), x2, beta=0.0).values()
                grad_w = x2.new_zeros(pattern.shape[0] * pattern.shape[1])
                grad_w[pattern.flat] = values
                grad_w = grad_w.view(pattern.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b, None, None


def csr_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pattern: CSRPattern,
    dense_grad: bool = False,
) -> torch.Tensor:
    """`F.linear(x, weight * mask, bias)` on CSR kernels (mask = `pattern`); differentiable.

    The weight gradient is zero outside the mask unless `dense_grad` (then it is the dense
    gradient, as `F.linear` would give)."""
    return _CSRLinearFunction.apply(x, weight, bias, pattern, dense_grad)
