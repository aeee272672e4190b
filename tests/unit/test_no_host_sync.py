"""An ordinary training step makes no device-to-host synchronisation (issue 10).

Counts the tensor calls that force one (`.item()`, `.tolist()`, `.cpu()`, `nonzero`, and the
`bool`/`int`/`float`/index conversions) during `optimizer.step()` for every dynamic and static
method, with SGD and Adam, and with the CSR training kernels. Not timed. Mask updates may sync
(host work is allowed there); the check is that they do not happen on ordinary steps.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsetrain

SYNC_CALLS = (
    "item",
    "tolist",
    "cpu",
    "numpy",
    "nonzero",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
)


@pytest.fixture
def count_syncs(monkeypatch):
    """Run a callable with every sync-forcing Tensor method spied on; returns the calls."""

    def run(fn):
        calls: list[str] = []
        for name in SYNC_CALLS:
            original = getattr(torch.Tensor, name)

            def spy(self, *args, _name=name, _orig=original, **kwargs):
                calls.append(_name)
                return _orig(self, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, spy)
        try:
            fn()
        finally:
            monkeypatch.undo()
        return calls

    return run


def _setup(method, optimizer="sgd", **options):
    torch.manual_seed(0)
    # large enough for the CSR kernels (>= 65536 weights at density <= 0.1)
    net = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))
    if optimizer == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    ctl = sparsetrain.sparsify(
        net, opt, method, density=0.05, init="ERK", total_steps=1000, steps_per_epoch=100,
        interval=50, **options,
    )  # fmt: skip
    x, y = torch.randn(16, 256), torch.randint(0, 10, (16,))

    def forward_backward():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()

    for _ in range(3):  # optimizer state exists from here on
        forward_backward()
        opt.step()
    return ctl, opt, forward_backward


def _controller_syncs(ctl, opt, count_syncs):
    """Syncs made by the controller's work around one optimizer step (Adam's own `.item()`
    on its CPU step counter is the optimizer's, not ours)."""
    ctl.detach()
    calls = count_syncs(ctl.before_optimizer_step)
    opt.step()
    return calls + count_syncs(ctl.after_optimizer_step)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("method", ["Static", "RigL", "SET", "SNFS", "Pruning"])
def test_ordinary_step_has_no_host_sync(method, optimizer, count_syncs):
    opts = {"start_when": 500} if method == "Pruning" else {}
    ctl, opt, forward_backward = _setup(method, optimizer, **opts)
    forward_backward()
    updates = len(ctl.update_log)
    assert _controller_syncs(ctl, opt, count_syncs) == []
    assert len(ctl.update_log) == updates, "the checked step must not be a mask update"


def test_sgd_step_with_hooks_has_no_host_sync(count_syncs):
    """With SGD the whole hooked `optimizer.step()` is sync-free, optimizer included."""
    _, opt, forward_backward = _setup("RigL")
    forward_backward()
    assert count_syncs(opt.step) == []


def test_ordinary_step_with_csr_kernels_has_no_host_sync(count_syncs):
    ctl, opt, forward_backward = _setup("RigL", sparse_kernels=True)
    assert ctl._csr, "the test model must route a layer through the CSR kernels"
    assert count_syncs(forward_backward) == []  # CSR forward and backward
    assert _controller_syncs(ctl, opt, count_syncs) == []


def test_step_before_a_rigl_update_captures_without_sync(count_syncs):
    """The step whose gradient feeds a RigL update (dense-gradient capture) does not sync
    before the update itself starts."""
    ctl, opt, forward_backward = _setup("RigL")
    while (ctl.step_count + 1) % 50:  # up to the step right before the update tick
        forward_backward()
        opt.step()
    forward_backward()
    assert count_syncs(ctl.before_optimizer_step) == []


def test_update_step_does_update(count_syncs):
    """Sanity check of the harness: a mask update is host work and is seen syncing."""
    ctl, opt, forward_backward = _setup("RigL")
    while (ctl.step_count + 1) % 50:
        forward_backward()
        opt.step()
    forward_backward()
    assert count_syncs(opt.step) != []
    assert len(ctl.update_log) == 1
