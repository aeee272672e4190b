"""SparsityController behaviour: optimizer state, hooks, errors, and no host sync per step."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import TinyNet, run_steps, tiny_batches
from torch import nn

import sparsetrain
from sparsetrain.errors import ConfigError, UnsupportedOptimizer


def make(method="RigL", optimizer="sgd", **kw):
    torch.manual_seed(0)
    net = TinyNet()
    if optimizer == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    kw.setdefault("total_steps", 40)
    ctl = sparsetrain.sparsify(net, opt, method, density=0.25, init="ERK", **kw)
    return net, opt, ctl


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_new_connections_start_at_zero_and_kept_ones_keep_state(optimizer):
    net, opt, ctl = make(optimizer=optimizer, interval=5, end_when=30)
    batches = tiny_batches(5)
    run_steps(net, opt, ctl, batches[:4])
    before_masks = {n: m.clone() for n, m in ctl.masks.items()}
    params = dict(net.named_parameters())
    before_w = {n: params[n].detach().clone() for n in ctl.masks}
    run_steps(net, opt, ctl, batches[4:])  # step 5: an update
    assert len(ctl.update_log) == 1
    key = "momentum_buffer" if optimizer == "sgd" else "exp_avg"
    for n, mask in ctl.masks.items():
        grown = mask & ~before_masks[n]
        kept = mask & before_masks[n]
        state = opt.state[params[n]][key]
        assert not params[n][grown].any(), "regrown weights must start at 0"
        assert not state[grown].any(), "regrown optimizer state must be zero"
        if optimizer == "sgd":  # lr = 0: kept weights are exactly unchanged by the update
            assert torch.equal(params[n][kept], before_w[n][kept])
        if ctl.layers[n].frozen_dense:
            assert torch.equal(mask, before_masks[n]), "dense layers are never churned"
        else:
            assert grown.any() and state[kept].abs().sum() > 0


def test_masked_weights_stay_zero_with_weight_decay_and_momentum():
    torch.manual_seed(0)
    net = TinyNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True)
    ctl = sparsetrain.sparsify(net, opt, "Static", density=0.2, init="random", total_steps=20)
    params = dict(net.named_parameters())
    run_steps(
        net, opt, ctl, tiny_batches(20),
        on_step=lambda i: [
            (not params[n][~m].any()) or pytest.fail(f"{n} moved at step {i}") for n, m in ctl.masks.items()
        ],
    )  # fmt: skip
    for n, m in ctl.masks.items():
        buf = opt.state[params[n]]["momentum_buffer"]
        assert not buf[~m].any(), "masked entries must receive no update"


def test_plain_optimizer_step_is_sparsified_through_hooks():
    net, opt, ctl = make("Static")
    x, y = tiny_batches(1)[0]
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()  # user loop never calls ctl.step()
    params = dict(net.named_parameters())
    assert ctl.step_count == 1
    assert all(not params[n][~m].any() for n, m in ctl.masks.items())


def test_rigl_dense_gradient_only_at_update_steps_snfs_every_step():
    net, opt, ctl = make("RigL", interval=10, end_when=30)
    run_steps(net, opt, ctl, tiny_batches(40))
    assert ctl.dense_grad_steps == 2  # updates at steps 10 and 20 (< T_end = 30)
    net, opt, ctl = make("SNFS", steps_per_epoch=10)
    run_steps(net, opt, ctl, tiny_batches(40), steps_per_epoch=10)
    assert ctl.dense_grad_steps == 40


@pytest.mark.parametrize("set_to_none", [True, False])
def test_rigl_grows_from_the_dense_gradient_whatever_zero_grad_does(set_to_none):
    """The masked copy handed to the optimizer on update steps reuses one buffer per layer;
    with zero_grad(set_to_none=False) that buffer comes back as the next gradient, and the
    grow must still see that gradient unmasked (same masks as a plain `grad * mask`)."""
    runs = []
    for keep_buffer in (True, False):
        net, opt, ctl = make("RigL", interval=4, end_when=30)
        opt.param_groups[0]["lr"] = 0.05
        if not keep_buffer:  # the plain copy: a fresh tensor on every update step
            ctl._masked_copy = lambda name, grad, masks=ctl.masks: grad * masks[name]
        storages = []
        for i, (x, y) in enumerate(tiny_batches(13)):
            opt.zero_grad(set_to_none=set_to_none)
            nn.functional.cross_entropy(net(x), y).backward()
            ctl.step()
            if (i + 1) % 4 == 0:
                storages.append({n: p.grad.data_ptr() for n, p in net.named_parameters()})
        runs.append(({n: m.clone() for n, m in ctl.masks.items()}, net.state_dict()))
        if keep_buffer and set_to_none:
            dynamic = [n for n, layer in ctl.layers.items() if not layer.frozen_dense]
            assert dynamic and all(storages[0][n] == storages[2][n] for n in dynamic)
    (masks, weights), (plain_masks, plain_weights) = runs
    assert all(torch.equal(masks[n], plain_masks[n]) for n in masks)
    assert all(torch.equal(weights[n], plain_weights[n]) for n in weights)


def test_snfs_redistribution_moves_budget_between_layers_keeping_total():
    net, opt, ctl = make("SNFS", steps_per_epoch=10)
    opt.param_groups[0]["lr"] = 0.05
    start = {n: layer.budget for n, layer in ctl.layers.items()}
    run_steps(net, opt, ctl, tiny_batches(40), steps_per_epoch=10)
    end = {n: layer.budget for n, layer in ctl.layers.items()}
    assert sum(end.values()) == sum(start.values())
    assert end != start


def test_update_log_has_mask_evolution_metrics():
    net, opt, ctl = make("RigL", interval=5, end_when=30)
    run_steps(net, opt, ctl, tiny_batches(12))
    entry = ctl.update_log[0]
    assert set(entry) >= {"step", "density", "changed_fraction", "itop_rate", "layer_densities"}
    assert 0 < entry["changed_fraction"] <= 1
    assert entry["itop_rate"] > ctl.density() - 1e-9


def test_no_host_sync_on_ordinary_step(monkeypatch):
    net, _opt, ctl = make("RigL", interval=50, end_when=30)
    x, y = tiny_batches(1)[0]
    nn.functional.cross_entropy(net(x), y).backward()
    calls = []
    for name in ("item", "tolist", "cpu", "nonzero", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _name=name, _orig=original, **k):
            calls.append(_name)
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    ctl.before_optimizer_step()
    ctl.after_optimizer_step()
    monkeypatch.undo()
    assert calls == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "Rigl"}, "valid choices: .*RigL"),
        ({"init": "gauss"}, "valid choices: .*ERK"),
        ({"density": 0.0}, r"density must be in \(0, 1\]"),
        ({"density": 1.5}, r"density must be in \(0, 1\]"),
        ({"interval": 0}, "interval must be a positive"),
        ({"end_when": 500}, "beyond training"),
        ({"method": "Pruning", "density": 0.5, "final_density": 0.8}, "above the starting density"),
        ({"method": "Lottery", "lottery_mask_path": "/nonexistent/last.pt"}, "not found.*Pruning"),
        ({"growth_mode": "magic"}, "valid choices: .*absolute-gradient"),
        ({"bogus_option": 1}, "unknown masking option"),
    ],
)
def test_bad_input_raises_clear_config_error(kwargs, message):
    torch.manual_seed(0)
    net = TinyNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    args = {"method": "RigL", "density": 0.2, "init": "ERK", "total_steps": 100} | kwargs
    with pytest.raises(ConfigError, match=message):
        sparsetrain.sparsify(net, opt, **args)


def test_unsupported_optimizer_is_a_type_error_naming_supported():
    net = TinyNet()
    with pytest.raises(TypeError, match=r"supported optimizers: .*SGD.*Adam") as info:
        sparsetrain.sparsify(net, torch.optim.RMSprop(net.parameters()), "RigL", total_steps=10)
    assert isinstance(info.value, UnsupportedOptimizer)


def test_model_without_maskable_layers():
    net = nn.Sequential(nn.BatchNorm1d(4))
    with pytest.raises(ConfigError, match="no maskable layers"):
        sparsetrain.sparsify(
            net, torch.optim.SGD(net.parameters(), lr=0.1), "Static", total_steps=1
        )


def test_soak_many_updates_density_exact():
    """Hundreds of updates on a small MLP: the density never drifts."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    ctl = sparsetrain.sparsify(
        net, opt, "SET", density=0.1, init="random", total_steps=400, apply_when="step_end",
        interval=1, end_when=400, decay_schedule="constant",
    )  # fmt: skip
    budgets = {n: layer.budget for n, layer in ctl.layers.items()}
    x = torch.randn(8, 16)
    for _ in range(399):
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        ctl.step()
    assert len(ctl.update_log) == 399
    assert {n: int(m.sum()) for n, m in ctl.masks.items()} == budgets


@pytest.mark.parametrize("positional", [False, True])
def test_step_with_closure_masks_the_closures_gradients(positional):
    """`optimizer.step(closure)` (Lightning's way): backward runs inside the step, so the
    gradients masked must be the closure's, not the previous step's."""
    torch.manual_seed(0)
    net = TinyNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    ctl = sparsetrain.sparsify(net, opt, "Static", density=0.2, init="ERK", total_steps=10)
    batches = tiny_batches(3)
    for x, y in batches:

        def closure(x=x, y=y):
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            return loss

        opt.step(closure) if positional else opt.step(closure=closure)
    params = dict(net.named_parameters())
    assert ctl.step_count == 3
    for n, mask in ctl.masks.items():
        assert not params[n][~mask].any()
        assert not opt.state[params[n]]["momentum_buffer"][~mask].any()


def test_scale_init_restores_each_units_dense_init_scale():
    """`scale_init`: active weights x sqrt(dense fan-in / active fan-in), per output unit;
    masked weights stay 0 and the masks are the same as without the option."""
    _, _, plain = make("Static")
    net, _, scaled = make("Static", scale_init=True)
    torch.manual_seed(0)
    reference = dict(TinyNet().named_parameters())  # the weights `make` drew before masking
    for name, mask in scaled.masks.items():
        assert torch.equal(mask, plain.masks[name])
        rows = mask.reshape(mask.shape[0], -1)
        expected_scale = (rows.shape[1] / rows.sum(1).clamp(min=1)).sqrt()
        expected = reference[name].detach() * expected_scale.view(-1, *[1] * (mask.dim() - 1))
        weight = dict(net.named_parameters())[name].detach()
        assert torch.allclose(weight[mask], expected[mask])
        assert not weight[~mask].any()
