"""Layers side by side on PyTorch's OpenMP threads: the same selections as one at a time."""

from __future__ import annotations

import contextlib
import copy
import importlib
import math
import pkgutil
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparsetrain
from sparsetrain import kernels, openmp
from sparsetrain.algorithms import dst
from sparsetrain.ops import apply_index_changes, drop_lowest_abs, mean_abs_at, without

pytestmark = pytest.mark.skipif(kernels.numba is None, reason="numba")


@contextlib.contextmanager
def team(on: bool):
    """PyTorch's threads (two) or the serial worker on the calling thread."""
    saved, threads = openmp.enabled, torch.get_num_threads()
    openmp.enabled = on
    torch.set_num_threads(2)
    try:
        yield
    finally:
        openmp.enabled, _ = saved, torch.set_num_threads(threads)


def _layers(seed: int, sizes=(70_000, 120_000, 3_000)):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        weight = (torch.randn(n, generator=g) * 8).round()  # heavy ties
        mask = torch.rand(n, generator=g) < 0.2
        ever = mask | (torch.rand(n, generator=g) < 0.1)
        out.append((weight, mask, ever, (torch.randn(n, generator=g) * 8).round()))
    return out


def _jobs(fraction: float, momentum: bool = False) -> list[dict]:
    """Layer jobs over `_layers` (heavy ties), dropping `fraction` of the active units."""
    jobs = []
    for weight, mask, ever, score in _layers(int(fraction * 10)):
        active = mask.nonzero().squeeze(1)
        drop = round(fraction * active.numel())
        jobs.append(
            {
                "index": active,
                "drop": drop,
                "before": mask,
                "k": drop + 5_000,  # at fraction 1.0: beyond the candidates of the small one
                "n_cand": mask.numel() - (active.numel() - drop),
                "ever": ever,
                "scores": score,
                "weight": weight.clone(),
                "states": [torch.randn(mask.numel())],
                "reset_fresh": fraction == 0.3,
                "factor": mask.float(),
                **({"momentum": score * torch.rand(mask.numel())} if momentum else {}),
            }
        )
    return jobs


def _check_jobs(on: bool, jobs: list[dict], redistribute: int | None = None) -> None:
    """The jobs' results and writes are those of the per-layer operators (with
    `redistribute`: of `dst.redistribute` by the mean |momentum| over the active units)."""
    weights = [job["weight"].clone() for job in jobs]
    evers = [job["ever"].clone() for job in jobs]
    grows = [job["k"] for job in jobs]
    if redistribute is not None:
        names = [str(j) for j in range(len(jobs))]
        grows = list(
            dst.redistribute(
                redistribute,
                {n: mean_abs_at(job["momentum"], job["index"]) for n, job in zip(names, jobs)},
                {n: job["n_cand"] for n, job in zip(names, jobs)},
            ).values()
        )
        assert grows != [job["drop"] for job in jobs]  # the budget really moves
    with team(on):
        changes = openmp.drop_and_commit_layers([dict(job) for job in jobs], redistribute)
    if on and sys.platform == "linux":
        assert openmp._gomp_parallel is not None, "PyTorch's OpenMP runtime not found"
    for job, w, got, ever, k in zip(jobs, weights, changes, evers, grows):
        index, drop = job["index"], job["drop"]
        if 0 < drop < index.numel():
            dropped, kept = drop_lowest_abs(w, index, drop)
        else:
            dropped, kept = index[:drop], index[drop:]
        mask = job["before"]
        after = without(mask, dropped)
        grown = dst.grow_highest_units(job["scores"], after, k, absolute=True, n_kept=kept.numel())
        gone, fresh, first_time = apply_index_changes(mask, after, dropped, grown, ever)
        active = torch.cat([kept, grown])
        for a, b in zip(got, (dropped, kept, after, grown, gone, fresh, first_time, active)):
            assert torch.equal(a, b)
        assert torch.equal(job["ever"], ever)  # first_time marked
        weight, (state,), factor = job["weight"], job["states"], job["factor"]
        assert not weight[gone].any() and torch.equal(factor, after.float())
        assert not state[fresh if job["reset_fresh"] else gone].any()


@pytest.mark.parametrize("on", [True, False])
@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_layer_jobs_equal_the_per_layer_ops(on, fraction):
    """Drop, grow and index changes of several layers at once (ties, k = 0, k = all, more
    growth than candidates) give exactly what the per-layer operators give."""
    _check_jobs(on, _jobs(fraction))


@pytest.mark.parametrize("on", [True, False])
@pytest.mark.parametrize("fraction", [0.3, 1.0])
def test_redistributed_jobs_equal_the_per_layer_ops(on, fraction):
    """SNFS's jobs (scores and drops, a wait, the redistribution, then grows and commits, in
    one call) give what the per-layer operators and `dst.redistribute` give."""
    jobs = _jobs(fraction, momentum=True)
    _check_jobs(on, jobs, sum(job["drop"] for job in jobs))


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(0, 10_000),
    layers=st.lists(
        st.tuples(
            st.one_of(
                st.floats(0, 1e3),
                st.sampled_from([0.0, 1e-300, 1.0, 1.0, math.inf, math.nan]),
            ),
            st.integers(0, 4_000),
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_the_jobs_redistribution_is_dst_redistribute(total, layers):
    """The jobs' compiled copy of SNFS's redistribution gives `dst.redistribute`'s counts
    (ties, caps, zero and non-finite scores)."""
    scores = {str(j): score for j, (score, _) in enumerate(layers)}
    caps = {str(j): cap for j, (_, cap) in enumerate(layers)}
    want = list(dst.redistribute(total, scores, caps).values())
    got = kernels.redistribute(total, list(scores.values()), list(caps.values()))
    assert got.tolist() == want
    assert sum(want) == min(total, sum(caps.values()))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("redistributed", [False, True])
def test_a_failing_job_raises_its_error(redistributed):
    """A job that fails on a worker thread is re-run on the caller's, which raises (the
    redistributed jobs' other thread does not wait for it forever)."""
    jobs = _jobs(0.3, momentum=redistributed)
    jobs[1]["index"] = jobs[1]["index"].clone()
    jobs[1]["index"][-1] = 10**9  # out of bounds
    with team(True), pytest.raises(IndexError):
        openmp.drop_and_commit_layers(jobs, 1_000 if redistributed else None)


class TwoBig(nn.Module):
    """Two layers above `openmp.MIN_UNITS`, so that updates use the layer jobs."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(256, 320)
        self.b = nn.Linear(320, 256)
        self.c = nn.Linear(256, 10)

    def forward(self, x):
        return self.c(F.relu(self.b(F.relu(self.a(x)))))


@pytest.mark.parametrize(
    ("method", "optimizer"),
    [
        ("RigL", "sgd"),
        ("SNFS", "sgd"),
        ("SET", "sgd"),
        ("RigL", "adam"),
        ("SET", "amsgrad"),
        ("SET+redistribution", "sgd"),  # random growth in SNFS's two phases
    ],
)
def test_controller_with_layer_jobs_equals_one_layer_at_a_time(method, optimizer, monkeypatch):
    """Training with the layer jobs (team or serial worker) and with the per-layer path
    gives identical masks, weights and optimizer state (Adam's two states are written by
    the job, AMSGrad's third by the controller)."""
    torch.manual_seed(0)
    base = TwoBig()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, 256, generator=g), torch.randint(0, 10, (32,), generator=g))]
    assert base.a.weight.numel() >= openmp.MIN_UNITS

    def train(mode: str):
        net = copy.deepcopy(base)
        if optimizer == "sgd":
            opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        else:
            opt = torch.optim.Adam(net.parameters(), lr=1e-3, amsgrad=optimizer == "amsgrad")
        kw = {"interval": 3} if method == "RigL" else {"steps_per_epoch": 3}
        if method == "SET+redistribution":
            kw["redistribution_mode"] = "momentum"
        name = method.split("+")[0]
        ctl = sparsetrain.sparsify(net, opt, name, density=0.1, init="ERK", total_steps=30, **kw)
        calls = []
        with monkeypatch.context() as m, team(mode == "team"):
            if mode == "per-layer":
                m.setattr(openmp, "MIN_UNITS", 10**12)
            run = openmp.run
            m.setattr(
                openmp,
                "run",
                lambda kind, rows, sizes: (
                    calls.extend([kind] if rows else []) or run(kind, rows, sizes)
                ),
            )
            for step in range(12):
                x, y = batches[0]
                opt.zero_grad()
                F.cross_entropy(net(x), y).backward()
                opt.step()
                if name != "RigL" and step % 3 == 2:
                    ctl.end_epoch()
        # one job per layer; SNFS's redistribution inside the jobs
        want = ["drop_commit"] if method in ("RigL", "SET") else ["redistribute"]
        assert sorted(set(calls)) == (want if mode != "per-layer" else [])
        return net, opt, ctl

    results = {mode: train(mode) for mode in ("team", "serial", "per-layer")}
    ref_net, ref_opt, ref_ctl = results["per-layer"]
    assert len(ref_ctl.update_log) >= 3
    for net, opt, ctl in (results["team"], results["serial"]):
        for name, mask in ref_ctl.masks.items():
            assert torch.equal(ctl.masks[name], mask), name
            assert torch.equal(ctl.ever_active[name], ref_ctl.ever_active[name])
        for p, q in zip(net.parameters(), ref_net.parameters()):
            assert torch.equal(p, q)
            state, ref_state = opt.state[p], ref_opt.state[q]
            for key, value in ref_state.items():
                assert torch.equal(state[key], value), key
        assert ctl.update_log == ref_ctl.update_log


def test_set_jobs_keep_budgets_exact_and_grown_weights_zero():
    """SET's team jobs draw inside the job (counter-based, from one seed per layer): every
    update keeps each layer's budget exactly and its new weights start at zero."""
    torch.manual_seed(0)
    net = TwoBig()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    ctl = sparsetrain.sparsify(
        net, opt, "SET", density=0.1, init="ERK", total_steps=30, steps_per_epoch=3
    )
    budgets = {name: int(mask.sum()) for name, mask in ctl.masks.items()}
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 256, generator=g), torch.randint(0, 10, (32,), generator=g)
    with team(True):
        for step in range(9):
            before = {name: mask.clone() for name, mask in ctl.masks.items()}
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
            if step % 3 == 2:
                ctl.end_epoch()
                params = dict(net.named_parameters())
                for name, mask in ctl.masks.items():
                    assert int(mask.sum()) == budgets[name]
                    assert not params[name][mask & ~before[name]].any()
    assert len(ctl.update_log) == 3


def test_warm_up_compiles_every_job_kind():
    """`make install` runs it: it must exercise the team's drop, score, draw and given
    commits without error (fast here: numba's cache already holds them)."""
    openmp.warm_up()
    assert openmp._compiled is not None


def test_every_compiled_function_lives_in_the_kernels_module():
    """numba's disk cache re-validates a compiled function by its own source file's stamp
    only: a job compiled in another module would keep running stale copies of the kernels
    it calls after they change. So every compiled function of the package, and the team's
    worker, is defined in kernels.py."""
    numba = pytest.importorskip("numba")
    compiled = 0
    for info in pkgutil.walk_packages(sparsetrain.__path__, "sparsetrain."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if isinstance(value, numba.core.registry.CPUDispatcher):
                compiled += 1
                where = value.py_func.__code__.co_filename
                assert where == kernels.__file__, f"{info.name}.{name} is compiled from {where}"
    assert compiled > 10
    assert openmp._worker()._pyfunc.__code__.co_filename == kernels.__file__
