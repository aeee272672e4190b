"""Layers side by side on PyTorch's OpenMP threads: the same selections as one at a time."""

from __future__ import annotations

import contextlib
import copy
import importlib
import pkgutil
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsetrain
from sparsetrain import kernels, openmp
from sparsetrain.algorithms.dst import grow_highest_units
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


@pytest.mark.parametrize("on", [True, False])
@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_layer_jobs_equal_the_per_layer_ops(on, fraction):
    """Drop, grow and index changes of several layers at once (ties, k = 0, k = all, more
    growth than candidates) give exactly what the per-layer operators give."""
    jobs, ever_before = [], []
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
            }
        )
        ever_before.append(ever.clone())
    weights = [job["weight"].clone() for job in jobs]
    with team(on):
        changes = openmp.drop_and_commit_layers([dict(job) for job in jobs])
    if on and sys.platform == "linux":
        assert openmp._gomp_parallel is not None, "PyTorch's OpenMP runtime not found"
    for job, w, got, ever in zip(jobs, weights, changes, ever_before):
        index, drop = job["index"], job["drop"]
        if 0 < drop < index.numel():
            dropped, kept = drop_lowest_abs(w, index, drop)
        else:
            dropped, kept = index[:drop], index[drop:]
        mask, k = job["before"], job["k"]
        after = without(mask, dropped)
        grown = grow_highest_units(job["scores"], after, k, absolute=True, n_kept=kept.numel())
        ever_after = ever.clone()
        gone, fresh, first_time = apply_index_changes(mask, after, dropped, grown, ever_after)
        active = torch.cat([kept, grown])
        for a, b in zip(got, (dropped, kept, after, grown, gone, fresh, first_time, active)):
            assert torch.equal(a, b)
        assert torch.equal(job["ever"], ever_after)  # first_time marked
        weight, (state,), factor = job["weight"], job["states"], job["factor"]
        assert not weight[gone].any() and torch.equal(factor, after.float())
        assert not state[fresh if job["reset_fresh"] else gone].any()


@pytest.mark.parametrize("on", [True, False])
def test_momentum_sums_equal_the_per_layer_mean(on):
    """SNFS's layer scores side by side: the same float64 sums as `ops.mean_abs_at`."""
    jobs = [(torch.randn(mask.numel()), mask.nonzero().squeeze(1)) for _, mask, _, _ in _layers(3)]
    with team(on):
        sums = openmp.abs_sum_layers(jobs)
    for (values, index), total in zip(jobs, sums):
        assert total / index.numel() == mean_abs_at(values, index)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_failing_job_raises_its_error():
    """A job that fails on a worker thread is re-run on the caller's, which raises."""
    values = torch.randn(100_000)
    good = torch.arange(0, 100_000, 7)
    bad = good.clone()
    bad[-1] = 10**9  # out of bounds
    with team(True), pytest.raises(IndexError):
        openmp.abs_sum_layers([(values, good), (values, bad)])


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
        # one job per layer, after SNFS's momentum sums
        want = ["drop_commit"] if method in ("RigL", "SET") else ["drop_commit", "sum"]
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
