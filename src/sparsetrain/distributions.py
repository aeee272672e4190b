"""Layer-wise density distributions: uniform ("random"), Erdős–Rényi (ER) and ER-Kernel (ERK).

Pure functions of the layer shapes. The result is an integer budget of active weights per
layer whose sum hits the global budget exactly:

1. raw score per layer: uniform 1; ER (n_in + n_out) / (n_in·n_out);
   ERK (n_in + n_out + k_h + k_w) / (n_in·n_out·k_h·k_w) (Linear layers: as ER).
2. solve ε with Σ ε·raw_l·N_l = d·Σ N_l over the non-dense layers; any layer whose density
   would exceed 1 is made dense and ε is solved again, until none exceeds 1.
3. integer counts by largest-remainder rounding (ties: earlier layer first), so the total is
   round(d·N) exactly; every layer keeps at least one weight (one kernel, if structured).

`random` keeps the first layer dense when it is a convolution (as the reference does: its
budget is tiny); the other layers share the rest, so the *global* density still equals d.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from sparsetrain.errors import ConfigError
from sparsetrain.masks import group_size, maskable_parameters
from sparsetrain.registry import Registry

#: canonical init name -> (raw-score kind, structured)
INITS: Registry[tuple[str, bool]] = Registry("sparse_init")
INITS.add("random", ("uniform", False), "uniform", "Random")
INITS.add("ER", ("er", False), "erdos-renyi")
INITS.add("ERK", ("erk", False), "erdos-renyi-kernel")
INITS.add("struct-random", ("uniform", True), "struct-uniform")
INITS.add("struct-ER", ("er", True), "struct-erdos-renyi")
INITS.add("struct-ERK", ("erk", True), "struct-erdos-renyi-kernel")
#: masks read from a previous run's checkpoint (Lottery, RigL_reinit)
LOTTERY_INITS = ("lottery", "lottery-ticket")


@dataclass(frozen=True)
class LayerShape:
    """The shape of one masked weight, and whether it is a convolution (ERK uses the kernel)."""

    shape: tuple[int, ...]
    is_conv: bool

    @property
    def numel(self) -> int:
        """Number of entries."""
        return math.prod(self.shape)


def canonical_init(init: str) -> str:
    """Canonical name of an init or alias (`erdos-renyi-kernel` → `ERK`, `lottery-ticket` →
    `lottery`); unknown names raise `ConfigError` listing the valid ones.

    Examples:
        >>> canonical_init("erdos-renyi-kernel"), canonical_init("Random"), canonical_init("lottery-ticket")
        ('ERK', 'random', 'lottery')
    """
    if init in LOTTERY_INITS:
        return "lottery"
    return INITS.canonical(init)


def is_structured(init: str) -> bool:
    """True for the `struct-*` inits, whose convolution masks switch whole kernels."""
    return init not in LOTTERY_INITS and INITS.get(init)[1]


def check_density(density: float, what: str = "density") -> float:
    """`density` as a float when it lies in (0, 1]; otherwise `ConfigError` naming `what`."""
    if not isinstance(density, int | float) or not 0.0 < float(density) <= 1.0:
        raise ConfigError(f"{what} must be in (0, 1], got {density!r}")
    return float(density)


def _raw_score(layer: LayerShape, kind: str) -> float:
    if kind == "uniform":
        return 1.0
    n_out, n_in = layer.shape[0], layer.shape[1]
    if kind == "erk" and layer.is_conv and len(layer.shape) == 4:
        kh, kw = layer.shape[2], layer.shape[3]
        return (n_in + n_out + kh + kw) / (n_in * n_out * kh * kw)
    return (n_in + n_out) / (n_in * n_out)


def _float_targets(
    layers: Mapping[str, LayerShape], density: float, kind: str, first_dense: bool
) -> dict[str, float]:
    """Real-valued active counts per layer (step 2 of the module docstring)."""
    total = sum(layer.numel for layer in layers.values())
    budget = density * total
    dense: set[str] = set()
    names = list(layers)
    first = layers[names[0]]
    if first_dense and kind == "uniform" and first.is_conv and first.numel < budget:
        dense.add(names[0])
    while True:
        dense_count = sum(layers[n].numel for n in dense)
        raw = {n: _raw_score(layers[n], kind) * layers[n].numel for n in names if n not in dense}
        if not raw:
            break
        eps = (budget - dense_count) / sum(raw.values())
        over = [n for n, r in raw.items() if eps * r > layers[n].numel]
        if not over:
            break
        dense.update(over)
    return {n: float(layers[n].numel) if n in dense else eps * raw[n] for n in names}


def apportion(
    targets: Mapping[str, float], caps: Mapping[str, int], total: int, floor: int = 1
) -> dict[str, int]:
    """Largest-remainder rounding of `targets` to integers summing to `total`,
    floor <= n <= cap (ties: earlier key first)."""
    counts = {n: min(caps[n], max(floor, math.floor(t))) for n, t in targets.items()}
    remaining = total - sum(counts.values())
    position = {n: i for i, n in enumerate(targets)}
    order = sorted(targets, key=lambda n: (math.floor(targets[n]) - targets[n], position[n]))
    while remaining != 0:
        progressed = False
        for n in order if remaining > 0 else reversed(order):
            if remaining > 0 and counts[n] < caps[n]:
                counts[n] += 1
                remaining -= 1
                progressed = True
            elif remaining < 0 and counts[n] > floor:
                counts[n] -= 1
                remaining += 1
                progressed = True
            if remaining == 0:
                break
        if not progressed:
            break
    return counts


def layer_budgets(
    layers: Mapping[str, LayerShape], density: float, init: str = "ERK"
) -> dict[str, int]:
    """Integer number of active weights per layer; sums to round(density · total) exactly
    (structured inits: to within one kernel per layer).

    Examples:
        >>> shapes = {"conv1": LayerShape((16, 3, 3, 3), True),
        ...           "conv2": LayerShape((32, 16, 3, 3), True),
        ...           "fc": LayerShape((10, 512), False)}  # 10,160 weights; 10 % = 1,016
        >>> layer_budgets(shapes, 0.1, "ERK")
        {'conv1': 42, 'conv2': 91, 'fc': 883}
        >>> layer_budgets(shapes, 0.1, "random")  # uniform, first conv kept dense
        {'conv1': 432, 'conv2': 277, 'fc': 307}
    """
    density = check_density(density)
    kind, structured = INITS.get(init)
    targets = _float_targets(layers, density, kind, first_dense=True)
    groups = {n: group_size(layer.shape, structured) for n, layer in layers.items()}
    unit_targets = {n: targets[n] / groups[n] for n in layers}
    unit_caps = {n: layers[n].numel // groups[n] for n in layers}
    if structured:  # whole kernels: the total is the rounded sum of kernel targets
        total_units = round(sum(unit_targets.values()))
    else:  # exactly round(d·N), not the float sum of the targets (22.5 may sum to 22.500001)
        total_units = round(density * sum(layer.numel for layer in layers.values()))
    if density == 1.0:
        return {n: layers[n].numel for n in layers}
    units = apportion(unit_targets, unit_caps, total_units)
    return {n: units[n] * groups[n] for n in layers}


def shapes_of(model: nn.Module) -> dict[str, LayerShape]:
    """{parameter name: LayerShape} of every masked weight of `model`, in module order."""
    return {
        name: LayerShape(tuple(p.shape), p.dim() == 4)
        for name, p in maskable_parameters(model).items()
    }


def layer_densities(model: nn.Module, density: float, init: str = "ERK") -> dict[str, float]:
    """{parameter name: density} for `model` at global `density` under `init`. Pure: no masks drawn.

    Examples:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 10))
        >>> d = layer_densities(net, 0.5, "ERK")
        >>> round(sum(d[n] * p.numel() for n, p in net.named_parameters() if n in d))
        5500
    """
    layers = shapes_of(model)
    return {n: c / layers[n].numel for n, c in layer_budgets(layers, density, init).items()}
