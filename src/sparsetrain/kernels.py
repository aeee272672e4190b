"""Fused CPU selection kernel (numba): the k best entries of a layer in one pass.

PyTorch's CPU operators make an exact top-k over a large layer cost several passes plus a
`nonzero` (about 1 ns per weight each). A mask update is mostly such selections, so with them
an update of an MLP costs most of a training step. This kernel does the same selection, with
the same result, as `ops.best_positions`' PyTorch path, in one compiled function: a strided
sample brackets the k-th score, one vectorised pass flags the candidates at least as good as the
bracket (in L1-sized chunks), the flags are packed to 64-bit words whose set bits alone are
visited, and a partition of those few finds the exact k-th.

The drop has its own fused call (`drop_lowest_abs`): the magnitudes are gathered at the active
indices, the k-th smallest is bracketed from a sample of those, and the same pass that counts
the magnitudes below the bracket collects the few inside it, so one quickselect over those and a
split finish the drop (about 10 % faster than gather, selection and split as separate calls);
its collecting and splitting passes visit set bits the same way.

`_drop_lowest_abs` then `_grow_and_commit` make the job (per layer) that `sparsetrain.openmp`
runs for several layers side by side, on PyTorch's own OpenMP threads; the jobs and their
worker are compiled here too (numba's disk cache checks a function's own file only).

Used for CPU tensors when numba is installed (a dependency); CUDA tensors, and environments
without numba or with `SPARSETRAIN_NUMBA=0`, use the PyTorch path. Both are tested to give
exactly the stable-sort choice, ties included.
"""

from __future__ import annotations

import os

import numpy as np
import torch

try:
    import numba
    from llvmlite import ir
    from numba import carray, types
    from numba.cpython.unsafe.numbers import trailing_zeros
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a dependency; this keeps the fallback honest
    numba = None

#: whether `best_positions` may use the kernel (tests flip it to check both paths)
enabled = numba is not None and os.environ.get("SPARSETRAIN_NUMBA", "1") != "0"

_DTYPES = (torch.float32, torch.float64)


def usable(values: torch.Tensor) -> bool:
    """Whether the kernels can work on `values` (CPU floats or int64 indices, enabled)."""
    return (
        enabled
        and values.device.type == "cpu"
        and (values.dtype in _DTYPES or values.dtype == torch.int64)
    )


def best_positions(
    values: torch.Tensor,
    k: int,
    largest: bool,
    absolute: bool,
    candidates: torch.Tensor | None,
    n_candidates: int,
    tiebreak: torch.Tensor | None,
    sample: int,
    exclude: bool = False,
) -> torch.Tensor:
    """Ascending positions of the k best candidates of the 1-D `values` (of |values| if
    `absolute`; 0 < k < `n_candidates`, their number); ties at the k-th score go to the
    lower `tiebreak` value (default: position). The candidates are the True entries of the
    bool `candidates` (all if None), or its False entries with `exclude`.
    `sample`: the number of strided scores that bracket the k-th (speed only)."""
    vals = values.detach().contiguous().numpy()
    cand = _no_bytes if candidates is None else candidates.contiguous().numpy().view(np.uint8)
    ties = _no_index if tiebreak is None else tiebreak.contiguous().numpy()
    if cand.shape[0] not in (0, vals.shape[0]) or ties.shape[0] not in (0, vals.shape[0]):
        raise ValueError("candidates and tiebreak must have one entry per value")
    skip = np.uint8(1 if exclude and cand.shape[0] else 0)
    return torch.from_numpy(
        _best_positions(vals, cand, skip, ties, k, n_candidates, largest, absolute, sample)
    )


def split(values: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the values at the distinct `positions`, the other values), both in `values`' order."""
    taken, rest = _split(values.contiguous().numpy(), positions.contiguous().numpy())
    return torch.from_numpy(taken), torch.from_numpy(rest)


def drop_lowest_abs(
    values: torch.Tensor, index: torch.Tensor, k: int, sample: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`ops.drop_lowest_abs` for a 1-D CPU float array: gather, select and split in one call."""
    dropped, kept = np.empty(k, np.int64), np.empty(index.shape[0] - k, np.int64)
    values = values.detach().contiguous().numpy()
    _drop_lowest_abs(values, index.numpy(), k, sample, dropped, kept, _no_values)
    return torch.from_numpy(dropped), torch.from_numpy(kept)


def abs_at(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """|values[index]| for a 1-D float array and int64 indices, in one pass."""
    return torch.from_numpy(_abs_at(values.detach().contiguous().numpy(), index.numpy()))


def abs_sum_at(values: torch.Tensor, index: torch.Tensor) -> float:
    """The sum of |values[index]| (float64 accumulation), in one pass."""
    return float(_abs_sum_at(values.detach().contiguous().numpy(), index.numpy()))


def draw_free(seed: int, free: torch.Tensor, k: int, exclude: bool = False) -> torch.Tensor:
    """k distinct entries of the contiguous 1-D bool `free` drawn uniformly (see
    `_draw_free`: from counter `seed`), ascending; they are cleared in `free` (updated in
    place). With `exclude` the free entries are the False ones, and the drawn are set."""
    flags = free.numpy().view(np.uint8)
    out = np.empty(k, np.int64)
    _draw_free(seed, flags, k, np.uint8(1 if exclude else 0), out)
    return torch.from_numpy(_sort_indices(out, flags.shape[0]))


def apply_index_changes(
    before: torch.Tensor,
    after: torch.Tensor,
    dropped: torch.Tensor,
    grown: torch.Tensor,
    ever: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`ops.apply_index_changes` for contiguous 1-D CPU masks, in one call."""
    gone, fresh, first_time = _apply_index_changes(
        before.contiguous().numpy().view(np.uint8),
        after.numpy().view(np.uint8),
        dropped.numpy(),
        grown.numpy(),
        ever.numpy().view(np.uint8),
    )
    return torch.from_numpy(gone), torch.from_numpy(fresh), torch.from_numpy(first_time)


def where_flag(index: torch.Tensor, flags: torch.Tensor, value: bool) -> torch.Tensor:
    """The entries i of the int64 array `index` with flags[i] == value (flags: 1-D bool)."""
    flag_bytes = flags.contiguous().numpy().view(np.uint8)
    return torch.from_numpy(_where_flag(index.contiguous().numpy(), flag_bytes, value))


_no_bytes = np.zeros(0, np.uint8)
_no_index = np.zeros(0, np.int64)
_no_values = np.zeros(0, np.float32)


def _jit(fn=None, *, checked=False):
    """numba.njit, cached on disk. The selection kernel is unchecked (its indices are its own);
    `checked` helpers index with caller-given indices, so a bad one raises IndexError."""
    if fn is None:
        return lambda f: _jit(f, checked=checked)
    return numba.njit(cache=True, nogil=True, boundscheck=checked)(fn) if numba else fn


@_jit
def _prime_at_least(n):
    n = max(n, 2)
    while True:
        d = 2
        while d * d <= n and n % d:
            d += 1
        if d * d > n:
            return n
        n += 1


@_jit
def _key(value, largest, absolute):
    """Higher is better; NaN ranks below everything."""
    if absolute:
        value = abs(value)
    key = value if largest else -value
    return -np.inf if key != key else key


@_jit
def _kth_smallest(a, kth):
    """The kth smallest (0-based) of `a`, which it reorders: quickselect, median-of-3 pivot."""
    lo, hi = 0, a.shape[0] - 1
    while hi > lo:
        x, y, z = a[lo], a[(lo + hi) >> 1], a[hi]
        if x > y:
            x, y = y, x
        pivot = max(x, min(y, z))
        i, j = lo, hi
        while i <= j:  # Hoare partition; the pivot's value is in the range, so both scans stop
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if kth <= j:
            hi = j
        elif kth >= i:
            lo = i
        else:
            break
    return a[kth]


@_jit
def _bracket(vals, cand, skip, k, n_cand, largest, absolute, sample):
    """(worse, better, expected): keys that very likely bracket the k-th best candidate key,
    from a strided sample (better = inf when k is too small a part of the sample to bound),
    and about how many candidates reach `worse` (0: no bracket)."""
    n = vals.shape[0]
    stride = _prime_at_least(n // sample)
    picked = np.empty(n // stride + 1, np.float64)
    m = 0
    for i in range(stride // 2, n, stride):
        if cand.shape[0] == 0 or cand[i] != skip:
            picked[m] = _key(vals[i], largest, absolute)
            m += 1
    # the k-th best is near rank p*m of the sample (from the top): allow 4 standard deviations
    p = k / n_cand
    margin = 4 * np.sqrt(m * p * (1 - p)) + 4
    worse_rank, better_rank = int(np.ceil(p * m + margin)), int(np.floor(p * m - margin))
    if m < 64 or worse_rank >= m:
        return -np.inf, np.inf, 0
    worse = _kth_smallest(picked[:m], m - worse_rank)
    better = np.inf
    if better_rank >= 1:  # among the worse_rank - 1 sampled keys above `worse`
        top = picked[m - worse_rank + 1 : m]
        better = _kth_smallest(top, top.shape[0] - better_rank)
    expected = int(worse_rank / m * n_cand) if worse > -np.inf else 0
    return worse, better, expected


#: scores are flagged in chunks that stay in the L1 cache
_CHUNK = 4096
#: for a word of eight 0/1 flag bytes, x * _PACK >> 56 has flag j as bit j
_PACK = np.uint64(0x0102040810204080)


@_jit
def _copy(src, dst, at=0):
    """dst[at : at + len(src)] = src, as a plain loop: numba's slice assignment checks for
    overlap and copies through a temporary (~0.3 ms for a 1 MB mask, 10x this loop)."""
    for i in range(src.shape[0]):
        dst[at + i] = src[i]


@_jit
def _pack_flags(flags, packed):
    """The _CHUNK 0/1 bytes of `flags` as bits: flag 64b + i is bit i of packed.view(uint64)[b]
    (a vectorised pass; visiting only the set bits of a word then skips the unflagged)."""
    words = flags.view(np.uint64)
    for w in range(_CHUNK // 8):
        packed[w] = (words[w] * _PACK) >> np.uint64(56)


@_jit
def _append_bits(bits, base, source, out, count):
    """out[count:] = source[base + i] for each set bit i of `bits`, ascending; the new count.
    `source` None: the positions base + i themselves."""
    while bits:
        i = base + np.int64(trailing_zeros(bits))
        out[count] = i if source is None else source[i]
        count += 1
        bits &= bits - np.uint64(1)
    return count


@_jit
def _flag(v, c, skip, largest, absolute, bound, flags):
    # one loop per case, so that LLVM vectorises each (NaN compares False: never flagged);
    # the candidates are the entries of `c` other than `skip`
    if absolute:
        if c.shape[0] == 0:
            for i in range(v.shape[0]):
                flags[i] = (abs(v[i]) >= bound) if largest else (abs(v[i]) <= bound)
        else:
            for i in range(v.shape[0]):
                flags[i] = ((abs(v[i]) >= bound) if largest else (abs(v[i]) <= bound)) & (
                    c[i] != skip
                )
    elif largest:
        if c.shape[0] == 0:
            for i in range(v.shape[0]):
                flags[i] = v[i] >= bound
        else:
            for i in range(v.shape[0]):
                flags[i] = (v[i] >= bound) & (c[i] != skip)
    elif c.shape[0] == 0:
        for i in range(v.shape[0]):
            flags[i] = v[i] <= bound
    else:
        for i in range(v.shape[0]):
            flags[i] = (v[i] <= bound) & (c[i] != skip)


@_jit
def _compact(vals, cand, skip, largest, absolute, worse, expected):
    """(ascending positions, their keys) of the candidates (the entries of `cand` other than
    `skip`, or all if `cand` is empty) whose key is at least `worse` (`expected`: about how
    many, to size the output). The keys are taken while the chunk is in L1, not gathered
    again from the layer. Visiting the set bits beats a branch-free pass over every entry
    unless nearly all are flagged (a branch-free pass for > 1/16 flagged cost SNFS's 784k
    layer 1.2 ms against 0.46 ms for the 1M one just under that line)."""
    n = vals.shape[0]
    bound = worse if largest else -worse
    flags = np.zeros(_CHUNK, np.uint8)
    packed = np.zeros(_CHUNK // 8, np.uint8)
    bit_words = packed.view(np.uint64)
    out = np.empty(max(expected, _CHUNK), np.int64)
    keys = np.empty(out.shape[0], np.float64)
    count = 0
    for start in range(0, n, _CHUNK):
        v = vals[start : start + _CHUNK]  # slices, not offsets: these loops vectorise
        m = v.shape[0]
        _flag(v, cand[start : start + _CHUNK], skip, largest, absolute, bound, flags)
        flags[m:] = 0
        if out.shape[0] - count < m:
            bigger, bigger_keys = (
                np.empty(2 * out.shape[0] + m, np.int64),
                np.empty(2 * out.shape[0] + m),
            )
            _copy(out[:count], bigger)
            _copy(keys[:count], bigger_keys)
            out, keys = bigger, bigger_keys
        _pack_flags(flags, packed)  # visit only the set bits, 64 scores a word
        for b in range((m + 63) // 64):
            bits = bit_words[b]
            while bits:
                i = 64 * b + np.int64(trailing_zeros(bits))
                out[count] = start + i
                keys[count] = _key(v[i], largest, absolute)
                count += 1
                bits &= bits - np.uint64(1)
    return out[:count], keys[:count]


#: histogram buckets for the exact k-th among the bracketed keys
_BUCKETS = 1024


@_jit
def _kth_best(keys, need, lo, hi):
    """The need-th highest of `keys` (all >= lo; not reordered). A histogram over [lo, hi]
    (keys above hi share the top bucket) finds the bucket holding it (bucket numbers are
    monotone in the key, so equal keys share one), and a quickselect among that bucket's
    keys gives the exact value."""
    c = keys.shape[0]
    if not hi < np.inf:
        hi = keys.max()
    scale = _BUCKETS / (hi - lo) if hi > lo else 0.0
    if c < 4 * _BUCKETS or not (lo > -np.inf and 0.0 < scale < np.inf):
        return _kth_smallest(keys.copy(), c - need)
    counts = np.zeros(_BUCKETS + 1, np.int64)
    for j in range(c):
        counts[np.int64(min((keys[j] - lo) * scale, _BUCKETS))] += 1
    above, b = 0, _BUCKETS
    while above + counts[b] < need:
        above += counts[b]
        b -= 1
    bucket = np.empty(counts[b], np.float64)
    n = 0
    for j in range(c):
        if np.int64(min((keys[j] - lo) * scale, _BUCKETS)) == b:
            bucket[n] = keys[j]
            n += 1
    return _kth_smallest(bucket, n - (need - above))


@_jit
def _best_positions(vals, cand, skip, ties, k, n_cand, largest, absolute, sample):
    n = vals.shape[0]
    worse, better, expected = -np.inf, np.inf, 0
    if n > 4 * sample:
        worse, better, expected = _bracket(vals, cand, skip, k, n_cand, largest, absolute, sample)
    found = expected > 0
    if found:
        pos, keys = _compact(vals, cand, skip, largest, absolute, worse, expected)
    else:
        pos, keys = np.empty(0, np.int64), np.empty(0, np.float64)
    if pos.shape[0] < k:  # no sample, or it missed (rare): every candidate, no bracket
        found = False  # (keys below the missed bound must not index the histogram)
        better = np.inf
        pos = np.arange(n) if cand.shape[0] == 0 else np.flatnonzero(cand != skip)
        if pos.shape[0] < k:
            raise ValueError("fewer candidates than k (n_candidates is wrong)")
        keys = np.empty(pos.shape[0], np.float64)
        for j in range(pos.shape[0]):
            keys[j] = _key(vals[pos[j]], largest, absolute)
    c = pos.shape[0]
    if not found:
        worse = keys.min()
    threshold = _kth_best(keys, k, worse, better)
    n_better = 0
    for j in range(c):
        n_better += keys[j] > threshold
    # the rest are ties at the threshold: the lowest positions, or the lowest `ties` values
    need_ties = k - n_better
    chosen_ties = np.empty(0, np.bool_)
    if ties.shape[0] != 0:
        at = np.flatnonzero(keys == threshold)
        if at.shape[0] > need_ties:
            chosen_ties = np.zeros(c, np.bool_)
            chosen_ties[at[np.argsort(ties[pos[at]], kind="mergesort")[:need_ties]]] = True
    out = np.empty(c, np.int64)
    taken = ties_seen = 0
    for j in range(c):  # branch-free: every position is written, the chosen ones kept
        tie = keys[j] == threshold
        tie_ok = chosen_ties[j] if chosen_ties.shape[0] else ties_seen < need_ties
        out[taken] = pos[j]
        taken += (keys[j] > threshold) | (tie & tie_ok)
        ties_seen += tie
    return out[:k]


@_jit(checked=True)
def _abs_keys(vals, index, other):
    """|vals[index]|, NaN as +inf, and the float64 sum of |other[index]| (0 if `other` is
    empty) in the same pass, in `_abs_sum_at`'s order (checked: `index` comes from the
    caller)."""
    keys = np.empty(index.shape[0], vals.dtype)
    total = 0.0
    if other.shape[0] == 0:
        for j in range(index.shape[0]):
            a = abs(vals[index[j]])
            keys[j] = a if a == a else np.inf
        return keys, total
    for j in range(index.shape[0]):
        i = index[j]
        a = abs(vals[i])
        keys[j] = a if a == a else np.inf
        total += abs(other[i])
    return keys, total


@_jit
def _drop_lowest_abs(vals, index, k, sample, dropped, kept, other):
    """The drop's selection fused (ranks as `_best_positions` on -|vals[index]|), into
    `dropped` (k entries) and `kept` (the rest): a gather, a strided sample that brackets the
    k-th smallest magnitude, one pass that counts the magnitudes below the bracket and
    collects the few inside it, the exact k-th among those, and a split pass. NaN ranks as
    +inf (dropped last); ties go to the lower index. The collecting and splitting passes flag
    in L1-sized chunks and visit set bits (`_compact`). Returns the float64 sum of
    |other[index]| (SNFS's momentum score, taken in the gather; 0 if `other` is empty)."""
    c = index.shape[0]
    if k <= 0 or k >= c:
        _copy(index[: dropped.shape[0]], dropped)
        _copy(index[dropped.shape[0] :], kept)
        return _abs_sum_at(other, index) if other.shape[0] else 0.0
    keys, total = _abs_keys(vals, index, other)
    lo, hi = -np.inf, np.inf
    stride = _prime_at_least(c // sample)
    if c >= 4 * sample:
        picked = keys[stride // 2 :: stride].copy()
        m = picked.shape[0]
        p = k / c
        margin = 4 * np.sqrt(m * p * (1 - p)) + 4
        lo_rank, hi_rank = int(np.floor(p * m - margin)), int(np.ceil(p * m + margin))
        if lo_rank >= 1 and hi_rank < m:
            hi = _kth_smallest(picked, hi_rank)
            # the quickselect left the hi_rank smallest in front: lo is among them
            lo = _kth_smallest(picked[:hi_rank], lo_rank)
    flags = np.zeros(_CHUNK, np.uint8)
    packed = np.zeros(_CHUNK // 8, np.uint8)
    bit_words = packed.view(np.uint64)
    below = n_band = 0
    band = np.empty(c, np.int64)
    for start in range(0, c, _CHUNK):  # below the bracket counted, inside it collected
        chunk = keys[start : start + _CHUNK]
        m = chunk.shape[0]
        for i in range(m):
            below += chunk[i] < lo
        for i in range(m):
            flags[i] = (chunk[i] >= lo) & (chunk[i] <= hi)
        flags[m:] = 0
        _pack_flags(flags, packed)
        for b in range((m + 63) // 64):
            n_band = _append_bits(bit_words[b], start + 64 * b, None, band, n_band)
    need = k - below
    if not 1 <= need <= n_band:  # the sample missed (rare): everything is the band
        need, n_band = k, c
        band[:c] = np.arange(c)
    band_keys = np.empty(n_band, keys.dtype)
    for i in range(n_band):
        band_keys[i] = keys[band[i]]
    threshold = _kth_smallest(band_keys.copy(), need - 1)
    need_ties = need - np.count_nonzero(band_keys < threshold)
    tie = np.flatnonzero(band_keys == threshold)
    if tie.shape[0] > need_ties:  # too many ties at the threshold: the lowest indices
        take = keys < threshold
        ties = band[tie]
        take[ties[np.argsort(index[ties], kind="mergesort")[:need_ties]]] = True
        _copy(index[take], dropped)
        _copy(index[~take], kept)
        return total
    d = n_kept = 0
    for start in range(0, c, _CHUNK):  # split: dropped are the set bits, kept the clear ones
        chunk, chunk_index = keys[start : start + _CHUNK], index[start : start + _CHUNK]
        m = chunk.shape[0]
        for i in range(m):
            flags[i] = chunk[i] <= threshold
        flags[m:] = 0
        _pack_flags(flags, packed)
        for b in range((m + 63) // 64):
            bits = bit_words[b]
            valid = m - 64 * b
            one = np.uint64(1)
            rest = ~bits if valid >= 64 else ~bits & ((one << np.uint64(valid)) - one)
            d = _append_bits(bits, 64 * b, chunk_index, dropped, d)
            n_kept = _append_bits(rest, 64 * b, chunk_index, kept, n_kept)
    return total


@_jit
def _grow_and_commit(vals, seed, before, after, dropped, k, n_cand, sample, targets, out, counts):
    """A layer's whole grow and commit in the index form (`targets`: see `_commit_units`):
    `after` = `before` without `dropped`, and k of the n_cand units not in it are grown (all
    if fewer): drawn uniformly from counter `seed` if it is >= 0 (SET, `_draw_free`), else
    the k best by |vals|. Then `_commit_units` (the writes into the layer's tensors are
    `_commit_write`'s tasks)."""
    _copy(before, after)
    for d in dropped:
        after[d] = 0
    if k <= 0:
        grown = np.empty(0, np.int64)
    elif k >= n_cand:
        grown = np.flatnonzero(after == 0)
    elif seed >= 0:
        grown = np.empty(k, np.int64)
        _draw_free(seed, after, k, np.uint8(1), grown)
        grown = _sort_indices(grown, before.shape[0])
    else:
        grown = _best_positions(vals, after, np.uint8(1), _no_index, k, n_cand, True, True, sample)
    _commit_units(before, after, dropped, grown, targets, out, counts)


@_jit
def _commit_units(before, after, dropped, grown, targets, out, counts):
    """Commit a drop-and-grow (`ops.apply_index_changes` and the controller's writes), its
    index part: set `grown` in `after` (`before` without `dropped`) and the first-time units
    in `ever`, and write the lists straight into `out` (no copies): the new active units
    (`kept`, then `grown`) from 0, then gone, fresh and first-time from `_segments`; their
    numbers (grown, gone, fresh, first-time) in `counts`. The writes into the layer's
    tensors are `_commit_write`'s tasks. `targets` = (kept, ever, weight, state0, state1,
    reset_fresh, factor): `state0`, `state1` (optimizer state) and the float mask `factor`
    empty if absent."""
    kept, ever = targets[0], targets[1]
    n_kept, n_grown = kept.shape[0], grown.shape[0]
    at_gone, at_fresh, at_first = _segments(n_kept, dropped.shape[0], n_grown)
    for g in grown:
        after[g] = 1
    _copy(kept, out)
    _copy(grown, out, n_kept)
    n_gone = _where_flag_into(dropped, after, 0, out, at_gone)
    n_fresh, n_first = _fresh_into(grown, before, ever, out, at_fresh, at_first)
    for i in out[at_first : at_first + n_first]:
        ever[i] = 1
    counts[0], counts[1], counts[2], counts[3] = n_grown, n_gone, n_fresh, n_first


#: `_commit_write`'s tasks: zero the weights gone; the two optimizer states (at the gone
#: units, or the fresh ones with `reset_fresh`); the float mask at the gone and the fresh
#: units. Independent scattered writes (different tensors, or disjoint units), so a team's
#: idle thread can take some of a large layer's.
WRITE_TASKS = 5


@_jit
def _commit_write(task, targets, n_dropped, out, counts):
    """One of the commit's writes into the layer's tensors (`WRITE_TASKS`), from the lists
    `_commit_units` left in `out` and `counts`."""
    kept, _, weight, state0, state1, reset_fresh, factor = targets
    n_grown, n_gone, n_fresh = counts[0], counts[1], counts[2]
    at_gone, at_fresh, _ = _segments(kept.shape[0], n_dropped, n_grown)
    gone, fresh = out[at_gone : at_gone + n_gone], out[at_fresh : at_fresh + n_fresh]
    if task == 0:
        for i in gone:
            weight[i] = 0
    elif task <= 2:
        state = state0 if task == 1 else state1
        if state.shape[0]:
            for i in fresh if reset_fresh else gone:
                state[i] = 0
    elif factor.shape[0]:
        for i in gone if task == 3 else fresh:
            factor[i] = 0 if task == 3 else 1


def segments(n_kept: int, n_dropped: int, n_grown: int) -> tuple[int, int, int]:
    """Where `_commit_units` puts gone, fresh and first-time in `out` (after the active
    units); `out` needs the last of these + n_grown entries."""
    at_gone = n_kept + n_grown
    at_fresh = at_gone + n_dropped
    return at_gone, at_fresh, at_fresh + n_grown


_segments = _jit(segments)


@_jit(checked=True)
def _split(values, positions):
    chosen = np.zeros(values.shape[0], np.uint8)
    for p in positions:
        chosen[p] = 1
    n_chosen = np.count_nonzero(chosen)
    taken = np.empty(n_chosen + 1, values.dtype)  # + 1: a slot for the last write
    rest = np.empty(values.shape[0] - n_chosen + 1, values.dtype)
    t = r = 0
    for i in range(values.shape[0]):  # branch-free: written to both, kept in one
        taken[t] = values[i]
        rest[r] = values[i]
        t += chosen[i]
        r += 1 - chosen[i]
    return taken[:t], rest[:r]


@_jit(checked=True)
def _where_flag(index, flags, value):
    out = np.empty(index.shape[0], index.dtype)
    return out[: _where_flag_into(index, flags, value, out, 0)]


@_jit(checked=True)
def _where_flag_into(index, flags, value, out, at):
    """Write the entries i of `index` with flags[i] == value to out[at:]; their number."""
    n = at
    for i in range(index.shape[0]):  # branch-free: every entry written, the wanted kept
        out[n] = index[i]
        n += flags[index[i]] == value
    return n - at


@_jit(checked=True)
def _abs_sum_at(values, index):
    total = 0.0
    for i in range(index.shape[0]):
        total += abs(values[index[i]])
    return total


@_jit(checked=True)
def _abs_at(values, index):
    out = np.empty(index.shape[0], values.dtype)
    for i in range(index.shape[0]):
        out[i] = abs(values[index[i]])
    return out


#: `_draw_free` maps 32 random bits to its range: fewer entries than this
MAX_DRAW_RANGE = 1 << 32
#: splitmix64's increment (the golden ratio): counter i of a stream is seed + i * _GOLDEN
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@_jit
def _mix(z):
    """splitmix64's output function: a bijective scramble of the 64-bit counter (a
    counter-based generator: any thread computes the same stream from the seed)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@_jit(checked=True)
def _draw_free(seed, flags, k, taken, out):
    """out[:k] = the first k uniform draws in [0, len(flags)) that hit an entry with
    flags != taken, each then set to taken (so each accepted draw is uniform over the
    entries still free: a uniform k-subset). Draws are splitmix64 of counter `seed`, mapped
    to the range without bias (Lemire's multiply-shift with rejection; fewer than 2^32
    entries). Raises if fewer than k entries are free (found by a bound on the draws)."""
    if flags.shape[0] >= MAX_DRAW_RANGE:
        raise ValueError("draw_free takes fewer than 2^32 entries")
    n = np.uint64(flags.shape[0])
    reject_below = (np.uint64(1) << np.uint64(32)) % n  # 2^32 mod n
    state = np.uint64(seed)
    got = 0
    for _ in range(64 * flags.shape[0] + 1024):
        if got == k:
            return
        state += _GOLDEN
        m = (_mix(state) >> np.uint64(32)) * n  # the high half is the draw
        if (m & np.uint64(0xFFFFFFFF)) < reject_below:  # the low half rejects the excess
            continue
        d = np.int64(m >> np.uint64(32))
        if flags[d] != taken:
            flags[d] = taken
            out[got] = d
            got += 1
    if got < k:
        raise ValueError("fewer free entries than k")


@_jit
def _sort_indices(a, end):
    """`a` (distinct ints in [0, end)) sorted: an LSD radix sort, 11 bits per pass (a
    comparison sort of 30k numbers costs ~1 ms on a CPU core, this ~0.1 ms)."""
    src, dst = a.copy(), np.empty_like(a)
    shift = 0
    while (end - 1) >> shift > 0 or shift == 0:
        counts = np.zeros(2049, np.int64)
        for v in src:
            counts[((v >> shift) & 2047) + 1] += 1
        for d in range(2048):
            counts[d + 1] += counts[d]
        for v in src:
            d = (v >> shift) & 2047
            dst[counts[d]] = v
            counts[d] += 1
        src, dst = dst, src
        shift += 11
    return src


@_jit(checked=True)
def _index_changes(before, after, dropped, grown, ever):
    """Set `grown` in `after`; (the dropped not regrown, the grown that were inactive in
    `before`, those of them not in `ever`)."""
    for g in grown:
        after[g] = 1
    gone = _where_flag(dropped, after, 0)
    lists = np.empty(2 * grown.shape[0], np.int64)
    n_fresh, n_first = _fresh_into(grown, before, ever, lists, 0, grown.shape[0])
    return gone, lists[:n_fresh], lists[grown.shape[0] : grown.shape[0] + n_first]


@_jit(checked=True)
def _fresh_into(grown, before, ever, out, at_fresh, at_first):
    """The grown units inactive in `before` (fresh) to out[at_fresh:], those of them not in
    `ever` to out[at_first:] (one loop: both reads of a unit in flight together); their
    numbers."""
    n_fresh, n_first = at_fresh, at_first
    for g in grown:  # branch-free: every entry written, the wanted kept
        out[n_fresh] = g
        out[n_first] = g
        fresh = before[g] == 0
        n_fresh += fresh
        n_first += fresh & (ever[g] == 0)
    return n_fresh - at_fresh, n_first - at_first


@_jit(checked=True)
def _apply_index_changes(before, after, dropped, grown, ever):
    gone, fresh, first_time = _index_changes(before, after, dropped, grown, ever)
    for f in first_time:
        ever[f] = 1
    return gone, fresh, first_time


# ------------------------------------------------- the layer jobs of sparsetrain.openmp
# Here, not in openmp.py: numba's disk cache re-validates a function by its own file only, so
# a job compiled in another module would keep running stale copies of the kernels it calls.
#: the header of a job table: [next job (the shared counter), number of jobs, row width,
#: kind (the position in JOBS)]
HEADER = 4
#: the width of a drop job's row (`_drop_job`)
DROP_ROW = 9
#: a redistributed job's row starts with [done, shared block, layer position, momentum, its
#: length], then a drop row and a commit row (`_sum_and_drop`)
SHARED_ROW = 5
#: the block the redistributed jobs share: [phase-1 jobs finished, one failed, next phase-2
#: job (a second counter), total regrowth, address of the float64 layer scores]
BLOCK = 5
#: every job row ends with [lists ready (0: not yet, 1: ready, 2: failed), next write task,
#: write tasks finished]: `_help` hands a large layer's writes to idle threads
SYNC = 3


@_jit
def _redistribute(total, scores, caps):
    """`dst.redistribute` of `total` units over layers with `scores` and `caps` (by position),
    the same float operations in the same order, so the same counts: shares ∝ score (equal if
    the scores sum to 0 or are not finite), then `distributions.apportion` with floor 0."""
    n = scores.shape[0]
    score_sum = 0.0
    for s in scores:
        score_sum += s
    shares = np.empty(n, np.float64)
    for i in range(n):
        shares[i] = scores[i] / score_sum if 0 < score_sum < np.inf else 1 / n
    total = min(total, caps.sum())
    targets = total * shares
    counts = np.empty(n, np.int64)
    for i in range(n):  # floor 0, at most the cap
        counts[i] = min(caps[i], max(0, np.int64(np.floor(targets[i]))))
    remaining = total - counts.sum()
    order = np.argsort(np.floor(targets) - targets, kind="mergesort")  # ties: lower position
    while remaining != 0:  # largest remainders first (smallest, when giving back)
        progressed, up = False, remaining > 0
        for j in range(n):
            i = order[j] if up else order[n - 1 - j]
            if remaining > 0 and counts[i] < caps[i]:
                counts[i] += 1
                remaining -= 1
                progressed = True
            elif remaining < 0 and counts[i] > 0:
                counts[i] -= 1
                remaining += 1
                progressed = True
            if remaining == 0:
                break
        if not progressed:
            break
    return counts


def redistribute(total: int, scores: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """`_redistribute` (the jobs' copy of SNFS's redistribution), for tests."""
    return _redistribute(total, np.asarray(scores, np.float64), np.asarray(caps, np.int64))


if numba is not None:

    def _pointer(numba_type):
        @intrinsic
        def cast(typingctx, address):
            sig = types.CPointer(numba_type)(address)

            def codegen(context, builder, signature, args):
                return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

            return sig, codegen

        return cast

    _f32, _f64 = _pointer(types.float32), _pointer(types.float64)
    _u8, _i64 = _pointer(types.uint8), _pointer(types.int64)

    @intrinsic
    def _address(typingctx, pointer):
        def codegen(context, builder, signature, args):
            return builder.ptrtoint(args[0], ir.IntType(64))

        return types.int64(pointer), codegen

    @intrinsic
    def _fetch_add(typingctx, address, value):
        """Atomically add `value` to the int64 at `address`; its value before (`value` 0: an
        atomic read)."""

        def codegen(context, builder, signature, args):
            ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
            return builder.atomic_rmw("add", ptr, args[1], "seq_cst")

        return types.int64(address, value), codegen

    @_jit
    def _drop_job(row, other):
        # row: [done, values, n, index, c, k, dropped, kept, sample]; the sum of |other[index]|
        values = carray(_f32(row[1]), (row[2],))
        index = carray(_i64(row[3]), (row[4],))
        k = row[5]
        dropped = carray(_i64(row[6]), (k,))
        kept = carray(_i64(row[7]), (row[4] - k,))
        return _drop_lowest_abs(values, index, k, row[8], dropped, kept, other)

    @_jit
    def _commit_targets(row):
        # `_commit_units`' targets of a commit row (see `_commit_job`)
        n, n_kept = row[2], row[10]
        return (
            carray(_i64(row[11]), (n_kept,)),
            carray(_u8(row[12]), (n,)),
            carray(_f32(row[13]), (n,)),
            carray(_f32(row[14]), (n if row[14] else 0,)),
            carray(_f32(row[15]), (n if row[15] else 0,)),
            row[16] != 0,
            carray(_f32(row[17]), (n if row[17] else 0,)),
        )

    @_jit
    def _commit_job(row):
        # row: done, scores, n, before, after, dropped, n_dropped, k, n_cand, sample, n_kept,
        # kept, ever, weight, state0, state1, reset_fresh, factor, out, out size, counts,
        # seed (< 0: none; a pointer 0: absent); the grow and the commit's lists (the writes
        # are `_commit_task`s)
        n, n_dropped = row[2], row[6]
        _grow_and_commit(
            carray(_f32(row[1]), (n if row[1] else 0,)),
            row[21],
            carray(_u8(row[3]), (n,)),
            carray(_u8(row[4]), (n,)),
            carray(_i64(row[5]), (n_dropped,)),
            row[7],
            row[8],
            row[9],
            _commit_targets(row),
            carray(_i64(row[18]), (row[19],)),
            carray(_i64(row[20]), (4,)),
        )

    @_jit
    def _commit_task(row, task):
        # one of a commit row's writes (`_commit_write`), after its `_commit_job`
        out, counts = carray(_i64(row[18]), (row[19],)), carray(_i64(row[20]), (4,))
        _commit_write(task, _commit_targets(row), row[6], out, counts)

    @_jit
    def _drop_and_commit_job(row):
        # row: a drop row, a commit row whose dropped and kept are the drop's outputs, SYNC
        _drop_job(row[:DROP_ROW], _no_values)
        _commit_job(row[DROP_ROW:])

    @_jit
    def _sum_and_drop(row):
        # a redistributed job's first phase: its layer score (the mean |momentum| over the
        # active units, which are the drop's index; 0 if none, or no momentum), then its drop
        block = carray(_i64(row[1]), (BLOCK,))
        momentum = carray(_f32(row[3]), (row[4] if row[3] else 0,))
        drop = row[SHARED_ROW : SHARED_ROW + DROP_ROW]
        total = _drop_job(drop, momentum)  # the momentum's sum taken in the drop's gather
        n_active = drop[4]
        score = total / n_active if momentum.shape[0] and n_active else 0.0
        carray(_f64(block[4]), (row[2] + 1,))[row[2]] = score

    @_jit
    def _grows(jobs):
        # each layer's regrowth (by position), from the scores and the commits' free units
        block = carray(_i64(jobs[0, 1]), (BLOCK,))
        n = jobs.shape[0]
        caps = np.empty(n, np.int64)
        for j in range(n):
            caps[jobs[j, 2]] = jobs[j, SHARED_ROW + DROP_ROW + 8]  # the commit's n_cand
        return _redistribute(block[3], carray(_f64(block[4]), (n,)), caps)

    @_jit
    def _grow_and_commit_redistributed(row, grows):
        commit = row[SHARED_ROW + DROP_ROW :]
        commit[7] = grows[row[2]]  # the commit's k
        _commit_job(commit)

    @_jit
    def _phase_guarded(row, phase, grows):
        # a job's phase (0: drop and commit lists; 1: a redistributed job's score and drop;
        # 2: its grow and commit lists); False if it raised: other threads wait on it, so
        # none may be lost
        try:
            if phase == 0:
                _drop_and_commit_job(row)
            elif phase == 1:
                _sum_and_drop(row)
            else:
                _grow_and_commit_redistributed(row, grows)
        except Exception:
            return False
        return True

    @_jit
    def _all_writes(row, commit_at):
        # the caller's re-run: every write task of a job whose lists were just made
        for task in range(WRITE_TASKS):
            _commit_task(row[commit_at:], task)
        row[0] = 1

    @_jit
    def _finish_drop_commit(jobs):
        # the caller's re-run of the jobs no thread finished (raises a job's error)
        for j in range(jobs.shape[0]):
            if jobs[j, 0] == 0:
                _drop_and_commit_job(jobs[j])
                _all_writes(jobs[j], DROP_ROW)

    @_jit
    def _finish_redistributed(jobs):
        # as `_finish_drop_commit`; if a first phase failed, no job grew: all run again
        if carray(_i64(jobs[0, 1]), (BLOCK,))[1]:
            for j in range(jobs.shape[0]):
                _sum_and_drop(jobs[j])
        grows = _grows(jobs)
        for j in range(jobs.shape[0]):
            if jobs[j, 0] == 0:
                _grow_and_commit_redistributed(jobs[j], grows)
                _all_writes(jobs[j], SHARED_ROW + DROP_ROW)

    @_jit
    def _help(start, table, j, commit_at):
        # take job j's write tasks until none is left; the thread finishing the last marks
        # the job done. The job's lists must be ready.
        width = table.shape[1]
        at = start + 8 * (HEADER + j * width + width - SYNC)  # its SYNC columns
        while True:
            task = _fetch_add(at + 8, 1)
            if task >= WRITE_TASKS:
                return
            _commit_task(table[j, commit_at:], task)
            if _fetch_add(at + 16, 1) == WRITE_TASKS - 1:
                table[j, 0] = 1

    @_jit
    def _run_job(start, table, j, phase, grows, commit_at):
        # a job's lists (or a failure) published to the other threads, then its writes
        ok = _phase_guarded(table[j], phase, grows)
        at = start + 8 * (HEADER + j * table.shape[1] + table.shape[1] - SYNC)
        _fetch_add(at, 1 if ok else 2)
        if ok:
            _help(start, table, j, commit_at)

    @_jit
    def _help_others(start, table, commit_at):
        # no job is left to take: share the write tasks of the jobs other threads still run
        # (each was taken, so its lists are ready, or failed, soon)
        width = table.shape[1]
        for j in range(table.shape[0]):
            at = start + 8 * (HEADER + j * width + width - SYNC)
            ready = _fetch_add(at, 0)
            while ready == 0:
                ready = _fetch_add(at, 0)
            if ready == 1:
                _help(start, table, j, commit_at)

    def _work(data):
        """What each thread runs: take the next job from the shared counter until none is
        left, then share the write tasks of the large layers other threads are still on
        (compiled on first use by `_worker`; module-level, so that numba's disk cache holds
        it once, not once per process as a closure). Redistributed jobs run in two phases:
        every layer's score and drop, a wait for all of them, the redistribution (each thread
        computes the same small one), then the grows and commits."""
        start = _address(data)
        header = carray(_i64(start), (HEADER,))
        table = carray(_i64(start + 8 * HEADER), (header[1], header[2]))
        n = header[1]
        if header[3] == 0:
            while True:
                j = _fetch_add(start, 1)
                if j >= n:
                    break
                _run_job(start, table, j, 0, _no_index, DROP_ROW)
            _help_others(start, table, DROP_ROW)
            return
        block_at = table[0, 1]
        block = carray(_i64(block_at), (BLOCK,))
        while True:
            j = _fetch_add(start, 1)
            if j >= n:
                break
            if not _phase_guarded(table[j], 1, _no_index):
                block[1] = 1  # published by the atomic add below
            _fetch_add(block_at, 1)
        while _fetch_add(block_at, 0) < n:  # the other threads' first phases
            pass
        if block[1]:
            return  # the caller re-runs them all, raising the error
        grows = _grows(table)
        commit_at = SHARED_ROW + DROP_ROW
        while True:
            j = _fetch_add(block_at + 16, 1)
            if j >= n:
                break
            _run_job(start, table, j, 2, grows, commit_at)
        _help_others(start, table, commit_at)

    #: the job kinds of a table, by name (a table's kind is the position here), each with its
    #: caller-side finish of the jobs no thread finished
    JOBS = {"drop_commit": _finish_drop_commit, "redistribute": _finish_redistributed}
