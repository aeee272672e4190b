"""`sparsetrain flops <hydra overrides>`: train/test FLOPs of a configured run, without training.

    sparsetrain flops model=wrn-22-2 dataset=CIFAR10 masking=RigL masking.density=0.2
    sparsetrain flops +specific=cifar10_wrn_22_2_masking masking.sparse_init=random
    sparsetrain flops masking=Pruning --masks-from outputs/.../ckpts/last.pt
    sparsetrain flops --reference          # the published CIFAR-10 WRN-22-2 table next to ours

Takes the same Hydra overrides as training and prints a per-layer table (dense MACs, density,
sparse MACs) with the total and the train / test FLOPs relative to the dense model
(`sparsetrain.flops.report`). Options (before or after the overrides): `--masks-from PATH`
(a checkpoint whose masks to count), `--json` (print the report as JSON), `--reference`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from sparsetrain.errors import SparsetrainError


def compose_config(overrides: list[str]) -> Any:
    """The training app's config with `overrides` applied (typed schema, strict keys)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from sparsetrain.config import register_configs

    register_configs()
    if GlobalHydra.instance().is_initialized():  # e.g. called from inside another Hydra app
        GlobalHydra.instance().clear()
    with initialize_config_module("sparsetrain.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _schedule_point(value: float, apply_when: str, steps_per_epoch: int | None) -> float:
    """Config `start_when`/`end_when` in report units: a fraction in (0, 1), a step count of the
    1x run (epochs are converted when the steps per epoch are known), or < 0 for never."""
    value = float(value)
    if apply_when == "epoch_end" and value >= 1 and steps_per_epoch is not None:
        return value * steps_per_epoch
    return value


def report_from_config(cfg: Any, masks_from: str | None = None) -> dict[str, Any]:
    """`sparsetrain.flops.report` for a composed training config."""
    from sparsetrain.algorithms import METHODS
    from sparsetrain.flops import report
    from sparsetrain.models import input_spec

    m = cfg.masking
    spec = METHODS.get(m.name)
    info = input_spec(cfg.dataset.name)
    num_train = getattr(info, "num_train", None)
    steps_per_epoch = None
    if num_train:
        usable = num_train * (1.0 - float(cfg.dataset.validation_split))
        steps_per_epoch = max(1, math.ceil(usable / int(cfg.dataset.batch_size)))
    total_steps = steps_per_epoch * int(cfg.optimizer.epochs) if steps_per_epoch else None
    interval = int(m.interval)
    if m.apply_when == "epoch_end" and steps_per_epoch:
        interval *= steps_per_epoch
    if masks_from is None and spec.init_from_checkpoint and m.get("lottery_mask_path"):
        masks_from = str(m.lottery_mask_path)
    density = float(m.density)
    final_density = m.get("final_density")
    if spec.pruning and final_density is not None:
        density = float(final_density)
    return report(
        cfg.model,
        info,
        m.name,
        density,
        None if spec.init_from_checkpoint and masks_from else m.sparse_init,
        training_multiplier=int(cfg.optimizer.training_multiplier),
        masks_from=masks_from,
        interval=interval,
        start_when=_schedule_point(m.start_when, m.apply_when, steps_per_epoch),
        end_when=_schedule_point(m.end_when, m.apply_when, steps_per_epoch),
        total_steps=total_steps,
        final_density=density if spec.pruning else None,
    )


def _macs(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def print_report(r: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    title = f"{r['method']} · {r['model']} · {r['dataset']} · density {r['density']:g}"
    if r.get("init"):
        title += f" · {r['init']}"
    if r["training_multiplier"] != 1:
        title += f" · {r['training_multiplier']}x"
    table = Table(title=title, show_footer=True)
    table.add_column("layer (weight)", footer="total", no_wrap=True)
    table.add_column("shape")
    table.add_column("dense MACs", justify="right", footer=_macs(r["dense_flops"]))
    dens = r["sparse_flops"] / r["dense_flops"] if r["dense_flops"] else 1.0
    table.add_column("density", justify="right", footer=f"{dens:.4f}")
    table.add_column("sparse MACs", justify="right", footer=_macs(r["sparse_flops"]))
    for name, layer in r["layers"].items():
        table.add_row(
            name.removesuffix(".weight"),
            "x".join(str(s) for s in layer["shape"]),
            _macs(layer["dense_flops"]),
            f"{layer['density']:.4f}",
            _macs(layer["density"] * layer["dense_flops"]),
        )
    console.print(table)
    note = " (estimate)" if r["estimate"] else ""
    console.print(
        f"train FLOPs {r['train']:.4f}x · test FLOPs {r['test']:.4f}x of the dense model"
        f"{note}  [dim](MACs of masked Conv2d/Linear weights per example; dense "
        f"{_macs(r['dense_flops'])})[/dim]"
    )


def print_reference_table(console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from sparsetrain.flops import reference_table

    console = console or Console()
    table = Table(title="FLOPs vs dense · CIFAR-10 WRN-22-2 · density 0.2")
    for col in ("method", "train", "test", "published train", "published test"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for row in reference_table():
        mark = " *" if row["estimate"] else ""
        table.add_row(
            row["label"] + mark,
            f"{row['train']:.2f}x",
            f"{row['test']:.2f}x",
            f"{row['published_train']:.2f}x",
            f"{row['published_test']:.2f}x",
        )
    console.print(table)
    console.print(
        "* estimate: no trained mask given (uniform layer densities under the Zhu-Gupta "
        "schedule); the published Pruning row comes from a trained global-magnitude mask — "
        "`sparsetrain flops masking=Pruning --masks-from <run>/ckpts/last.pt` counts one."
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="sparsetrain flops",
        description="Train/test FLOPs (relative to dense) of a configured run, without training.",
        epilog="Any other argument is a Hydra override, as for training.",
    )
    parser.add_argument("--masks-from", metavar="CKPT", help="count the masks of this checkpoint")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--reference", action="store_true", help="print the reference table")
    try:  # --help and usage errors: argparse's message, then an exit code (not SystemExit)
        args, overrides = parser.parse_known_args(argv)
        bad = [o for o in overrides if o.startswith("--")]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        if args.reference:
            print_reference_table()
            return 0
        cfg = compose_config(overrides)
        r = report_from_config(cfg, args.masks_from)
        if args.json:
            print(json.dumps(r, indent=2, sort_keys=True))
        else:
            print_report(r)
        return 0
    except SparsetrainError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if not isinstance(exc, HydraException | OmegaConfBaseException):
            raise
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
