"""Property tests: for any layer shapes and density, budgets are exact and densities valid."""

from hypothesis import given, settings
from hypothesis import strategies as st

from sparsetrain.distributions import LayerShape, layer_budgets

conv = st.tuples(st.integers(1, 64), st.integers(1, 64), st.sampled_from([1, 3, 5]))
linear = st.tuples(st.integers(1, 300), st.integers(1, 300))


@st.composite
def layer_sets(draw):
    convs = draw(st.lists(conv, min_size=0, max_size=4))
    linears = draw(st.lists(linear, min_size=1, max_size=4))
    layers = {}
    for i, (o, c, k) in enumerate(convs):
        layers[f"c{i}.weight"] = LayerShape((o, c, k, k), True)
    for i, (o, c) in enumerate(linears):
        layers[f"f{i}.weight"] = LayerShape((o, c), False)
    return layers


@settings(max_examples=150, deadline=None)
@given(layer_sets(), st.floats(0.001, 1.0), st.sampled_from(["random", "ER", "ERK"]))
def test_budget_exact_and_densities_in_range(layers, density, init):
    budgets = layer_budgets(layers, density, init)
    total = sum(x.numel for x in layers.values())
    target = round(density * total)
    if target >= len(layers):  # the one-weight-per-layer minimum can only raise tiny budgets
        assert sum(budgets.values()) == target
    for name, b in budgets.items():
        assert 1 <= b <= layers[name].numel


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 64), st.integers(65, 512), st.floats(0.01, 0.5))
def test_erk_gives_small_layers_higher_density(small, big, density):
    layers = {
        "small.weight": LayerShape((small, small), False),
        "big.weight": LayerShape((big, big), False),
    }
    b = layer_budgets(layers, density, "ERK")
    assert b["small.weight"] / small**2 >= b["big.weight"] / big**2 - 1 / big**2


def test_budget_total_is_round_of_density_times_total_at_a_half():
    """Found by hypothesis: the float targets (first conv dense) summed to 22.500000000000004,
    which rounded to 23 instead of round(0.5 · 45) = 22."""
    layers = {
        "c0.weight": LayerShape((1, 4, 1, 1), True),
        "c1.weight": LayerShape((1, 11, 1, 1), True),
        "c2.weight": LayerShape((1, 17, 1, 1), True),
        "f0.weight": LayerShape((1, 13), False),
    }
    assert sum(layer_budgets(layers, 0.5, "random").values()) == round(0.5 * 45)
