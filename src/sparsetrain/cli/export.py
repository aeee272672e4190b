"""`sparsetrain export <run dir or checkpoint> --format csr [--out PATH]`: sparse inference model.

    sparsetrain export outputs/FashionMNIST/RigL_ERK/0.05/seed=0              # its ckpts/last.pt
    sparsetrain export outputs/.../ckpts/epoch_10.pth --out model_csr.pt
    sparsetrain export RUN --max-density 0.1                                  # stricter CSR cut

Builds the run's model (`model`, `dataset.name`, `width` from the run's `.hydra/config.yaml`,
or from the checkpoint's own config record), loads the checkpoint's weights and masks, turns
Linear layers sparse enough to gain into CSR layers (`sparsetrain.export.to_sparse`), checks
that the sparse model's outputs match the masked dense model on a random batch, and writes it
(default `<run dir>/export/<checkpoint name>_csr.pt`; load it with
`sparsetrain.export.load_sparse`, a `weights_only` load). Prints one line per masked layer.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from sparsetrain.errors import CheckpointError, ConfigError, SparsetrainError

FORMATS = ("csr",)


def resolve(path: str) -> tuple[Path, Path]:
    """(checkpoint file, run directory) for a run directory or a checkpoint path."""
    p = Path(path)
    if p.is_dir():
        ckpt = p / "ckpts" / "last.pt"
        if not ckpt.is_file():
            found = (
                sorted(q.name for q in (p / "ckpts").glob("*.pt*"))
                if (p / "ckpts").is_dir()
                else []
            )
            hint = f" (found: {', '.join(found)})" if found else ""
            raise CheckpointError(f"no checkpoint {ckpt}{hint}; pass a checkpoint file instead")
        return ckpt, p
    if not p.is_file():
        raise CheckpointError(f"no run directory or checkpoint at {path}")
    return p, (p.parent.parent if p.parent.name == "ckpts" else p.parent)


def model_spec(run_dir: Path, ckpt: dict[str, Any]) -> tuple[str, str, float]:
    """(model name, data set name, width) of the run: `.hydra/config.yaml`, else the
    checkpoint's config record."""
    config_file = run_dir / ".hydra" / "config.yaml"
    if config_file.is_file():
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(config_file)
        try:
            return str(cfg.model), str(cfg.dataset.name), float(cfg.get("width", 1.0))
        except Exception as exc:
            raise ConfigError(
                f"{config_file} does not name the model and data set: {exc}"
            ) from None
    record = ckpt.get("config")
    if isinstance(record, dict) and "model" in record and "dataset.name" in record:
        return str(record["model"]), str(record["dataset.name"]), float(record.get("width", 1.0))
    raise ConfigError(
        f"cannot tell which model the checkpoint holds: no {config_file} and no config record "
        "in the checkpoint; export from the run directory that wrote it"
    )


def export(path: str, out: str | None = None, max_density: float | None = None) -> dict[str, Any]:
    """Export a run's checkpoint; returns a summary (output path, per-layer kernels)."""
    import torch

    from sparsetrain.export import MAX_DENSITY, masked_copy, save_sparse, sparse_layers, to_sparse
    from sparsetrain.models import build, input_spec

    ckpt_path, run_dir = resolve(path)
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {ckpt_path}: {exc}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{ckpt_path} holds no model state dict ('model' entry)")
    name, dataset, width = model_spec(run_dir, ckpt)
    model = build(name, dataset, width)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"{ckpt_path} does not match model {name!r} (width {width}) for {dataset}: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    sparsity = ckpt.get("sparsity")
    masks = sparsity.get("masks") if isinstance(sparsity, dict) else None
    limit = MAX_DENSITY if max_density is None else max_density
    sparse = to_sparse(model, masks, max_density=limit)

    # the export must compute what the masked dense model computes
    info = input_spec(dataset)
    x = torch.randn(
        8, info.in_channels, *info.image_size, generator=torch.Generator().manual_seed(0)
    )
    dense = masked_copy(model, masks)
    with torch.inference_mode():
        want, got = dense(x), sparse(x)
    if not torch.allclose(want, got, rtol=1e-4, atol=1e-5):
        raise SparsetrainError(
            f"sparse export differs from the masked model (max |diff| "
            f"{(want - got).abs().max().item():.3g}); not written"
        )
    target = Path(out) if out else run_dir / "export" / f"{ckpt_path.stem}_csr.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    save_sparse(sparse, target, model=name, dataset=dataset, width=width)
    csr = set(sparse_layers(sparse))
    layers = []
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            weight_name = f"{module_name}.weight"
            mask = masks.get(weight_name) if masks else None
            active = (
                int(mask.sum()) if mask is not None else int(torch.count_nonzero(module.weight))
            )
            layers.append(
                {
                    "name": module_name,
                    "shape": tuple(module.weight.shape),
                    "density": active / module.weight.numel(),
                    "kernel": "csr" if module_name in csr else "dense",
                }
            )
    return {"out": str(target), "model": name, "dataset": dataset, "width": width, "layers": layers}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="sparsetrain export",
        description="Write a sparse (CSR) inference model from a run directory or checkpoint.",
    )
    parser.add_argument("path", help="run directory (uses ckpts/last.pt) or checkpoint file")
    parser.add_argument("--format", choices=FORMATS, default="csr", help="export format (csr)")
    parser.add_argument("--out", help="output file (default <run dir>/export/<ckpt>_csr.pt)")
    parser.add_argument(
        "--max-density",
        type=float,
        default=None,
        help="Linear layers at or below this density use CSR (default: the measured cut, 0.25)",
    )
    try:  # --help and usage errors: argparse's message, then an exit code (not SystemExit)
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        summary = export(args.path, args.out, args.max_density)
    except SparsetrainError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    for layer in summary["layers"]:
        shape = "x".join(str(s) for s in layer["shape"])
        print(
            f"  {layer['name']:<32} {shape:>16}  density {layer['density']:.4f}  {layer['kernel']}"
        )
    n_csr = sum(layer["kernel"] == "csr" for layer in summary["layers"])
    print(f"wrote {summary['out']} ({summary['model']}, {n_csr} CSR layer(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
