import math

import pytest
import torch
from torch import nn

from sparsetrain.distributions import LayerShape, layer_budgets, layer_densities
from sparsetrain.errors import ConfigError


def _shapes(*shapes):
    return {f"l{i}.weight": LayerShape(s, len(s) == 4) for i, s in enumerate(shapes)}


def test_uniform_mlp_every_layer_same_density():
    layers = _shapes((100, 50), (50, 100), (10, 50))
    budgets = layer_budgets(layers, 0.2, "random")
    assert budgets == {"l0.weight": 1000, "l1.weight": 1000, "l2.weight": 100}


def test_random_keeps_first_conv_dense_and_global_budget_exact():
    layers = _shapes((16, 3, 3, 3), (32, 16, 3, 3), (10, 512))
    budgets = layer_budgets(layers, 0.1, "random")
    total = sum(x.numel for x in layers.values())
    assert budgets["l0.weight"] == 16 * 27  # dense first conv
    assert sum(budgets.values()) == round(0.1 * total)


def test_er_by_hand():
    # ER raw: (n_in + n_out)/(n_in n_out): (100,100) -> 0.02, (10,100) -> 0.11
    # eps * (0.02*10000 + 0.11*1000) = 0.5 * 11000 -> eps = 5500/310 = 17.74; layer 2 > 1 -> dense
    # then layer 1 gets 5500 - 1000 = 4500 of 10000
    layers = _shapes((100, 100), (10, 100))
    assert layer_budgets(layers, 0.5, "ER") == {"l0.weight": 4500, "l1.weight": 1000}


def test_erk_uses_kernel_dims_and_aliases_agree():
    layers = _shapes((64, 64, 3, 3), (64, 64, 1, 1), (10, 64))
    a = layer_budgets(layers, 0.3, "ERK")
    b = layer_budgets(layers, 0.3, "erdos-renyi-kernel")
    assert a == b
    dens = {n: a[n] / layers[n].numel for n in a}
    assert dens["l1.weight"] > dens["l0.weight"]  # 1x1 conv: fewer params -> denser


def test_density_one_is_dense_and_bad_density_errors():
    layers = _shapes((4, 4))
    assert layer_budgets(layers, 1.0, "ERK") == {"l0.weight": 16}
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ConfigError, match=r"density must be in \(0, 1\]"):
            layer_budgets(layers, bad, "ERK")


def test_unknown_init_names_choices():
    with pytest.raises(ConfigError, match=r"valid choices: .*ERK"):
        layer_budgets(_shapes((4, 4)), 0.5, "gaussian")


def test_minimum_one_weight_per_layer():
    layers = _shapes((1000, 1000), (2, 2))
    budgets = layer_budgets(layers, 1e-6, "random")
    assert all(b >= 1 for b in budgets.values())


def test_layer_densities_on_module():
    net = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 5))
    dens = layer_densities(net, 0.4, "ER")
    total = sum(p.numel() for n, p in net.named_parameters() if n.endswith("weight"))
    active = sum(dens[n] * p.numel() for n, p in net.named_parameters() if n in dens)
    assert math.isclose(active, round(0.4 * total))
    assert set(dens) == {"0.weight", "2.weight"}


def test_erk_wrn_22_2_dense_small_layers():
    models = pytest.importorskip("sparsetrain.models")
    try:
        net = models.build("wrn-22-2", "CIFAR10")
    except Exception as exc:  # models land separately
        pytest.skip(f"wrn-22-2 not available: {exc}")
    dens = layer_densities(net, 0.2, "ERK")
    total = sum(p.numel() for n, p in net.named_parameters() if n in dens)
    assert round(sum(dens[n] * p.numel() for n, p in net.named_parameters() if n in dens)) == round(
        0.2 * total
    )
    assert len(dens) == 23
    assert dens["conv1.weight"] == 1.0
    assert dens["fc.weight"] == 1.0
    for name in dens:
        if "convShortcut" in name:
            assert dens[name] == 1.0, name


def test_structured_budget_in_whole_kernels():
    layers = _shapes((8, 4, 3, 3), (10, 32))
    budgets = layer_budgets(layers, 0.3, "struct-ERK")
    assert budgets["l0.weight"] % 9 == 0
    total = sum(x.numel for x in layers.values())
    assert abs(sum(budgets.values()) - 0.3 * total) <= 9


def test_budgets_sum_exactly_for_real_shapes():
    torch.manual_seed(0)
    layers = _shapes((20, 1, 5, 5), (50, 20, 5, 5), (500, 800), (10, 500))
    for init in ("random", "ER", "ERK"):
        for d in (0.01, 0.05, 0.1, 0.2, 0.5, 0.9):
            total = sum(x.numel for x in layers.values())
            assert sum(layer_budgets(layers, d, init).values()) == round(d * total)
