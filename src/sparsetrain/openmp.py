"""The mask update's per-layer kernels side by side on PyTorch's own OpenMP threads.

Inside training the second core is not idle between steps: PyTorch's OpenMP worker spins on
it, waiting for the next operator, for milliseconds after each one. Python threads running
the (GIL-free) kernels of two layers at once were measured no faster, because the spinning
worker keeps that core. So the layers' kernels are handed to that worker instead: one call
of libgomp's `GOMP_parallel` (the ABI every OpenMP compiler emits, exported by the runtime
PyTorch loaded) runs a compiled worker on each thread of PyTorch's team, and the workers
take the layers from a shared counter, largest first. Two 1M-weight layers then update in
about 0.6 of the time one thread takes.

A job is one layer's whole drop, grow and commit: it reads its layer and writes only that
layer's tensors and buffers allocated for it, so the results are the serial ones, bit for bit;
the same compiled worker runs serially when PyTorch has one thread, its runtime is not found
(not Linux, not OpenMP), or `SPARSETRAIN_OPENMP=0`. With SNFS's redistribution the jobs run in
two phases of the same call: each layer's mean |momentum| and drop, a wait for all of them,
the redistribution (each thread computes the same one, it is tiny), then the grows and
commits. A commit's writes into the layer's tensors (weights, optimizer state, float mask at
the gone and fresh units) are separate tasks: a thread with no layer left to take shares the
tasks of the layers still running, so the small layers' thread helps with the largest one's
(measured: SET's and SNFS's team call 0.94-0.96 of the time without it, masks identical).
A job that fails (a bug) leaves its "done" flag unset, and the caller re-runs it on the
serial path, which raises the real error.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import torch

from sparsetrain import kernels, ops
from sparsetrain.ops import SELECTION_SAMPLE

try:
    from numba import cfunc, types
except ImportError:  # pragma: no cover - numba is a dependency
    cfunc = None

#: whether `run` may use PyTorch's OpenMP threads (tests flip it to check both paths)
enabled = os.environ.get("SPARSETRAIN_OPENMP", "1") != "0"

#: the team runs when at least two layers have this many weights (below, a layer updates in
#: microseconds and the smaller layers just fill in behind the large ones)
MIN_UNITS = 1 << 16


def _find_gomp_parallel():
    """`GOMP_parallel` of the OpenMP runtime PyTorch loaded, or None."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    torch_dir = str(Path(torch.__file__).parent)
    runtimes = {
        line.split(None, 5)[5].strip()
        for line in maps.splitlines()
        if line.count(" ") >= 5 and any(n in line for n in ("libgomp", "libiomp", "libomp"))
    }
    # PyTorch's own copy first: another runtime may be loaded beside it (e.g. numba's)
    for path in sorted(runtimes, key=lambda p: not p.startswith(torch_dir)):
        try:
            fn = ctypes.CDLL(path).GOMP_parallel
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        fn.restype = None
        return fn
    return None


_gomp_parallel = None
_searched = False
_compiled = None


def _worker():
    """The compiled `_work` (a C callback), built or loaded from numba's cache once."""
    global _compiled
    if _compiled is None:
        _compiled = cfunc(types.void(types.voidptr), cache=True, nogil=True)(kernels._work)
    return _compiled


def run(kind: str, rows: list[list[int]], sizes: list[int]) -> None:
    """Run the jobs (one table row each; `sizes` orders them, largest first) on PyTorch's
    OpenMP threads, or serially; a job whose "done" flag (column 0) stays unset is re-run
    from Python, which raises its error."""
    global _gomp_parallel, _searched
    if not rows:
        return
    order = sorted(range(len(rows)), key=lambda j: -sizes[j])
    width = len(rows[0])
    header = [0, len(rows), width, list(kernels.JOBS).index(kind)]  # kernels.HEADER entries
    table = np.array(header + [x for j in order for x in rows[j]], np.int64)
    jobs = table[kernels.HEADER :].reshape(len(rows), width)
    threads = min(torch.get_num_threads(), len(rows))
    if enabled and threads > 1 and not _searched:
        _gomp_parallel, _searched = _find_gomp_parallel(), True
    if enabled and threads > 1 and _gomp_parallel is not None:
        _gomp_parallel(_worker().address, table.ctypes.data, threads, 0)
    else:
        _worker().ctypes(ctypes.c_void_p(table.ctypes.data))
    if not jobs[:, 0].all():
        kernels.JOBS[kind](jobs)


def usable(values: torch.Tensor) -> bool:
    """Whether the layer jobs can take `values` (float32 on CPU, kernels enabled)."""
    return cfunc is not None and kernels.usable(values) and values.dtype == torch.float32


def _drop_row(
    values: torch.Tensor, index: torch.Tensor, k: int, sample: int
) -> tuple[list[int], torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """A drop's table row (see `kernels._drop_job`: `ops.drop_lowest_abs` of values[index],
    k units), its dropped and kept outputs, and the tensors behind the row's pointers (to keep
    alive until the job has run)."""
    values, index = values.detach().contiguous(), index.contiguous()
    k = min(max(k, 0), index.numel())
    dropped = torch.empty(k, dtype=torch.long)
    kept = torch.empty(index.numel() - k, dtype=torch.long)
    row = [
        *(0, values.data_ptr(), values.numel(), index.data_ptr(), index.numel(), k),
        *(dropped.data_ptr(), kept.data_ptr(), sample),
    ]
    return row, dropped, kept, [values, index]


def _float_pointer(tensor: torch.Tensor | None, n: int) -> int:
    """The address of a contiguous float32 CPU tensor of n entries, else 0 (absent)."""
    usable_here = (
        tensor is not None
        and tensor.dtype == torch.float32
        and tensor.device.type == "cpu"
        and tensor.is_contiguous()
        and tensor.numel() == n
    )
    return tensor.data_ptr() if usable_here else 0


def drop_and_commit_layers(
    jobs: list[dict], redistribute: int | None = None
) -> list[tuple[torch.Tensor, ...]]:
    """Each layer's drop and then its grow and commit, as one job per layer, side by side.
    A job has the drop's `index` (the active units) and `drop` (how many of them, by lowest
    |weight|, as `ops.drop_lowest_abs`), `before` (the 1-D bool unit mask), `k` (units to
    grow), `n_cand` (units not kept), `ever`, `weight`, `states`, `reset_fresh` and `factor`
    (see `kernels._commit_units`), and how to grow: `scores` (float32: the k best by |score|),
    or `seed` (SET: k units drawn uniformly, as `ops.random_positions` with that seed). For
    each, (dropped, kept, after, grown, gone, fresh, first_time, active), as
    `ops.drop_lowest_abs`, `dst.grow_highest_units` (absolute), `ops.apply_index_changes` and
    the controller's writes, `ever` included (first_time marked). Weights, states and the
    float mask must be float32 and contiguous (`usable`), else the caller writes them:
    `written` in each job tells which were.

    `redistribute`: SNFS's regrowth of that many units in all, split over the jobs' layers as
    `dst.redistribute` does (`kernels._redistribute`) by their mean |`momentum`| (a float32
    tensor or None) over the active units; the jobs' `k` are then not used."""
    rows, done = [], []
    scores = np.zeros(len(jobs), np.float64)
    block = np.array([0, 0, 0, redistribute or 0, scores.ctypes.data], np.int64)
    for position, job in enumerate(jobs):
        row, dropped, kept, alive = _drop_row(
            job["weight"], job["index"], job["drop"], SELECTION_SAMPLE // 2
        )
        if redistribute is not None:
            momentum = job["momentum"]
            momentum = _NONE if momentum is None else momentum.detach().reshape(-1).contiguous()
            pointer = momentum.data_ptr() if momentum.numel() else 0
            row = [0, block.ctypes.data, position, pointer, momentum.numel(), *row]
            alive.append(momentum)
        commit_row, outputs, commit_alive = _commit_row(job, dropped, kept, redistribute)
        rows.append(row + commit_row + [0] * kernels.SYNC)
        done.append((dropped, kept, outputs, alive + commit_alive))
    kind = "drop_commit" if redistribute is None else "redistribute"
    run(kind, rows, [job["before"].numel() for job in jobs])
    return [(dropped, kept, *_commit_results(*outputs)) for dropped, kept, outputs, _ in done]


def _commit_row(
    job: dict, dropped: torch.Tensor, kept: torch.Tensor, redistribute: int | None
) -> tuple:
    """A commit job's table row (see `kernels._commit_job`), what `_commit_results` needs,
    and the tensors behind the row's pointers (to keep alive until the job has run); with
    `redistribute` (the total regrowth), its output is sized for the most the layer may get."""
    before = job["before"]
    n, n_dropped, n_kept = before.numel(), dropped.numel(), kept.numel()
    scores = job.get("scores")
    scores = _NONE if scores is None else scores.detach().reshape(-1).contiguous()
    k = job["k"] if redistribute is None else redistribute
    n_grown = min(max(k, 0), job["n_cand"])
    after = torch.empty_like(before)
    states = [*job["states"], None, None][:2]
    pointers = [_float_pointer(t, n) for t in (job["weight"], *states, job["factor"])]
    job["written"] = [p != 0 for p in pointers]
    if not pointers[0]:
        raise ValueError("drop_and_commit_layers needs float32 contiguous weights")
    size = kernels.segments(n_kept, n_dropped, n_grown)[2] + n_grown
    out = torch.empty(size + 4, dtype=torch.long)  # + 4: the counts
    row = [
        *(0, scores.data_ptr() if scores.numel() else 0, n, before.data_ptr()),
        *(after.data_ptr(), dropped.data_ptr(), n_dropped, k, job["n_cand"]),
        *(SELECTION_SAMPLE, n_kept),
        *(kept.data_ptr(), job["ever"].data_ptr(), pointers[0], pointers[1], pointers[2]),
        *(int(job["reset_fresh"]), pointers[3], out.data_ptr(), size),
        *(out.data_ptr() + 8 * size, job.get("seed", -1)),
    ]
    return row, (after, out, n_kept, n_dropped), [scores, dropped, kept]


def _commit_results(
    after: torch.Tensor, out: torch.Tensor, n_kept: int, n_dropped: int
) -> tuple[torch.Tensor, ...]:
    """(after, grown, gone, fresh, first_time, active): views of a commit job's output."""
    n_grown, n_gone, n_fresh, n_first = out[-4:].tolist()
    at_gone, at_fresh, at_first = kernels.segments(n_kept, n_dropped, n_grown)
    active = out[: n_kept + n_grown]
    return (
        after,
        active[n_kept:],
        out[at_gone : at_gone + n_gone],
        out[at_fresh : at_fresh + n_fresh],
        out[at_first : at_first + n_first],
        active,
    )


_NONE = torch.empty(0, dtype=torch.long)


def warm_up() -> None:
    """Compile the CPU kernels and the team's worker into numba's disk cache (or load them
    from it), so that the first mask update of a run does not pay for it (~20-30 s once per
    machine); `make install` runs it. float32 signatures only: others compile on first use."""
    if cfunc is None or not kernels.enabled:
        return
    g = torch.Generator().manual_seed(0)
    n = 4 * MIN_UNITS
    mask = torch.rand(n, generator=g) < 0.2
    weight, scores = torch.randn(n, generator=g), torch.randn(n, generator=g)
    active = mask.nonzero().squeeze(1)
    dropped, kept = ops.drop_lowest_abs(weight, active, active.numel() // 3)
    for redistribute in (None, dropped.numel()):  # both kinds of table
        jobs = [
            {
                "index": active,
                "drop": dropped.numel(),
                "before": mask,
                "k": dropped.numel(),
                "n_cand": n - kept.numel(),
                "ever": mask.clone(),  # each job writes only its own layer's tensors
                "weight": weight.clone(),
                "states": [scores.clone()],
                "reset_fresh": False,
                "factor": mask.float(),
                "momentum": scores,
                **grow,
            }
            for grow in ({"scores": scores}, {"seed": ops.random_seed(g)})
        ]
        drop_and_commit_layers(jobs, redistribute)
    after = ops.without(mask, dropped)
    grown = ops.random_positions(after, dropped.numel(), g, in_place=True, exclude=True)
    ops.apply_index_changes(mask, after, dropped, grown, mask.clone())
    ops.best_positions(scores, 10, largest=True, candidates=mask, absolute=True)
    ops.best_positions(scores, 10, largest=True, candidates=mask, exclude=True, absolute=True)
    ops.mean_abs_at(scores, active)
