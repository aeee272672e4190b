"""Draw the Concepts page's figures into docs/img/ from the engine's own functions.

    python docs/gen_figures.py        # or: make docs-figures

Every curve and bar is computed by sparsetrain itself (`schedules`, `distributions`,
`algorithms.dst`), so a figure shows what the code does, not what a formula in a paper says.
Runs in a few seconds on CPU; the PNGs are committed so building the docs needs no plotting.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap

from sparsetrain.algorithms.dst import drop_lowest_magnitude, grow_highest
from sparsetrain.distributions import layer_densities
from sparsetrain.models import build
from sparsetrain.schedules import is_update_step, update_fraction, zhu_gupta_density

OUT = Path(__file__).resolve().parent / "img"
COLORS = {"random": "#9e9e9e", "ER": "#4c72b0", "ERK": "#dd8452"}
plt.rcParams.update({"figure.dpi": 110, "font.size": 9, "axes.spines.top": False,
                     "axes.spines.right": False})  # fmt: skip


def save(fig: plt.Figure, name: str) -> None:
    fig.tight_layout()
    fig.savefig(OUT / name, dpi=110, metadata={"Software": None})
    plt.close(fig)
    print(f"wrote {OUT / name}")


def alpha_schedules() -> None:
    """α_t for cosine / linear / constant, with RigL's update steps (ΔT) marked."""
    total, alpha, interval = 1000, 0.3, 100
    end = round(0.75 * total)
    t = np.arange(0, total + 1)
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    for schedule, style in (("cosine", "-"), ("linear", "--"), ("constant", ":")):
        y = [update_fraction(int(s), alpha, end, schedule) if s < end else 0.0 for s in t]
        ax.plot(t, y, style, label=schedule, color="#333333" if schedule == "cosine" else None)
    updates = [s for s in range(1, total + 1) if is_update_step(s, 0, end, interval)]
    ax.scatter(updates, [update_fraction(s, alpha, end) for s in updates], color="#dd8452",
               zorder=3, label=f"cosine updates (ΔT = {interval})")  # fmt: skip
    ax.axvline(end, color="#999999", lw=0.8)
    ax.text(end, alpha * 1.02, "  T_end = 0.75·T", va="bottom", fontsize=8)
    ax.set(xlabel="optimizer step t", ylabel="α_t (fraction of active weights updated)",
           ylim=(0, alpha * 1.15), xlim=(0, total))  # fmt: skip
    ax.legend(frameon=False, fontsize=8)
    save(fig, "alpha_schedules.png")


def zhu_gupta() -> None:
    """The reference CIFAR Pruning schedule: dense until t0, cubic to the final density."""
    t0, t_end, interval, final = 700, 65918, 100, 0.2
    total = 250 * 352  # 250 epochs of 45k images / 128
    t = np.arange(0, total, 50)
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    ax.plot(t, [zhu_gupta_density(int(s), 1.0, final, t0, t_end) for s in t], color="#4c72b0")
    steps = list(range(t0, t_end + 1, interval * 40))
    ax.scatter(steps, [zhu_gupta_density(s, 1.0, final, t0, t_end) for s in steps], s=10,
               color="#4c72b0", label=f"a prune every ΔT = {interval} steps (every 40th shown)")  # fmt: skip
    for x, label in ((t0, "t0 = 700"), (t_end, "t_end = 65,918")):
        ax.axvline(x, color="#999999", lw=0.8)
        ax.text(x, 0.95, f" {label}", fontsize=8, va="top")
    ax.set(xlabel="optimizer step", ylabel="density (1 − sparsity)", ylim=(0, 1.05),
           xlim=(0, total))  # fmt: skip
    ax.legend(frameon=False, fontsize=8, loc="lower left")
    save(fig, "zhu_gupta.png")


def short_name(name: str) -> str:
    name = name.removesuffix(".weight")
    return name.replace("block", "b").replace(".layer.", ".").replace("convShortcut", "short")


def layer_density_bars(model: str, dataset: str, density: float, file: str) -> None:
    net = build(model, dataset)
    inits = ("random", "ER", "ERK")
    per_init = {init: layer_densities(net, density, init) for init in inits}
    names = list(per_init["ERK"])
    sizes = {n: p.numel() for n, p in net.named_parameters() if n in per_init["ERK"]}
    x = np.arange(len(names))
    width = 0.8 / len(inits)
    fig, ax = plt.subplots(figsize=(max(4.8, 0.42 * len(names) + 1.5), 3.2))
    for i, init in enumerate(inits):
        ax.bar(x + (i - 1) * width, [per_init[init][n] for n in names], width,
               label="uniform (random)" if init == "random" else init, color=COLORS[init])  # fmt: skip
    ax.axhline(density, color="#333333", lw=0.8, ls="--", label=f"global density {density}")
    labels = [f"{short_name(n)}\n{sizes[n] / 1000:.1f}k" if len(names) < 8 else short_name(n)
              for n in names]  # fmt: skip
    ax.set_xticks(x, labels, rotation=0 if len(names) < 8 else 70, fontsize=7)
    ax.set(ylabel="layer density", ylim=(0, 1.08),
           title=f"{model} on {dataset}, global density {density}")  # fmt: skip
    ax.title.set_fontsize(9)
    ax.legend(frameon=False, fontsize=8, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.35)
              if len(names) >= 8 else (0.5, -0.25))  # fmt: skip
    save(fig, file)


def drop_grow() -> None:
    """One RigL update on a 6x10 layer, computed with the engine's pure functions."""
    g = torch.Generator().manual_seed(3)
    shape, active, k = (6, 10), 18, 5
    mask = torch.zeros(60, dtype=torch.bool)
    mask[torch.randperm(60, generator=g)[:active]] = True
    mask = mask.reshape(shape)
    weight = torch.randn(shape, generator=g) * mask
    grad = torch.randn(shape, generator=g).abs()
    kept = drop_lowest_magnitude(weight, mask, k)
    new = grow_highest(grad, kept, k)
    # 0 inactive, 1 kept, 2 dropped, 3 grown (new), 4 dropped and regrown in the same update
    state = torch.zeros(shape, dtype=torch.long)
    state[kept] = 1
    state[mask & ~kept & ~new] = 2
    state[new & ~mask] = 3
    state[mask & ~kept & new] = 4
    cmap = ListedColormap(["#f2f2f2", "#4c72b0", "#c44e52", "#55a868", "#8172b3"])
    fig, axes = plt.subplots(1, 3, figsize=(9.2, 2.6))
    panels = (
        (
            "before: |w| of the active weights",
            weight.abs().masked_fill(~mask, float("nan")),
            "Blues",
        ),
        (
            "grow score |g| of the connections not kept",
            grad.masked_fill(kept, float("nan")),
            "Greens",
        ),
    )
    for ax, (title, data, cm) in zip(axes[:2], panels):
        ax.imshow(data.numpy(), cmap=cm, vmin=0)
        ax.set_title(title, fontsize=9)
    axes[2].imshow(state.numpy(), cmap=cmap, vmin=0, vmax=4)
    axes[2].set_title(f"after: drop {k} smallest |w|, grow {k} largest |g|", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(5)]
    labels = ["inactive", "kept (weight, optimizer state kept)", "dropped",
              "grown (weight 0, optimizer state 0)", "dropped, then regrown (= kept)"]  # fmt: skip
    fig.legend(handles, labels, loc="lower center", ncols=3, frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(OUT / "drop_grow.png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    print(f"wrote {OUT / 'drop_grow.png'}")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    alpha_schedules()
    zhu_gupta()
    layer_density_bars("lenet5", "FashionMNIST", 0.2, "densities_lenet5.png")
    layer_density_bars("wrn-22-2", "CIFAR10", 0.2, "densities_wrn22.png")
    drop_grow()


if __name__ == "__main__":
    main()
