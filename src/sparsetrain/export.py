"""Masked model → sparse inference model: Linear layers on `torch.sparse` CSR kernels.

    sparse = to_sparse(model, masks)              # masks: {param name: bool tensor}, e.g. ctl.masks
    with torch.inference_mode():
        y = sparse(x)                             # allclose to model(x) with the masks applied

A Linear layer becomes a `SparseLinear` (weight held as a CSR matrix with int32 indices,
y = x Wᵀ + b computed as `addmm(b, W_csr, xᵀ)ᵀ`) only where that wins: by default when its
density is at most `max_density` and it is large enough for the kernel's fixed cost to pay
(`min_numel`). Pass `example_input` to decide per layer by timing both kernels on the inputs
the layer really sees. Measured on 2 CPU threads (`make bench`, benchmarks/results.md): a
4096-4096-4096-10 MLP at batch 64 runs about 5× faster at density 0.05; one 4096×4096 layer
gains 1.9× at density 0.2, 1.3× at 0.3, nothing at 0.4 and loses at 0.5 (0.8×), so the
default cut is 0.25.

Convolutions stay dense: on CPU, unfolding the input for a sparse matrix product costs several
times a whole dense (oneDNN) convolution on its own, at any density (measured in the benchmark).

The exported file (`save_sparse` / `load_sparse`, used by `sparsetrain export`) is a plain dict
loadable with `torch.load(..., weights_only=True)`: model name, data set, width, the masked
state dict with CSR weights, and which layers are sparse.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsetrain.errors import CheckpointError, ConfigError
from sparsetrain.io import atomic_torch_save
from sparsetrain.masks import unwrap

EXPORT_FORMAT = "sparsetrain-csr-1"
#: default density at or below which a Linear layer uses the CSR kernel (see module docstring)
MAX_DENSITY = 0.25
#: layers smaller than this many weights stay dense (kernel launch cost dominates)
MIN_NUMEL = 1 << 14


def _csr(dense: torch.Tensor) -> torch.Tensor:
    """CSR copy of a 2-D tensor with int32 indices (what the MKL kernels take natively)."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        csr = dense.to_sparse_csr()
    return torch.sparse_csr_tensor(
        csr.crow_indices().to(torch.int32),
        csr.col_indices().to(torch.int32),
        csr.values(),
        size=csr.shape,
        check_invariants=False,  # built by to_sparse_csr: valid by construction
    )


class SparseLinear(nn.Module):
    """Inference-only Linear whose weight is a CSR matrix: y = x Wᵀ + b.

    The product is computed as (W xᵀ)ᵀ, a sparse × dense matrix product; its result is a
    transposed view, which the next SparseLinear consumes without a copy."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", _csr(weight.detach()))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, layer: nn.Linear, mask: torch.Tensor | None = None) -> SparseLinear:
        weight = layer.weight.detach()
        if mask is not None:
            weight = weight * mask
        return cls(weight, layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.bias is None:
            out = torch.mm(self.weight, flat.t())
        else:
            out = torch.addmm(self.bias.unsqueeze(1), self.weight, flat.t())
        return out.t().reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        density = nnz / (self.in_features * self.out_features)
        return f"in_features={self.in_features}, out_features={self.out_features}, density={density:.4f}"


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _median_time(fn: Any, reps: int = 7) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _layer_inputs(
    model: nn.Module, names: list[str], example_input: Any
) -> dict[str, torch.Tensor]:
    """The input each named module receives on `model(example_input)`."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(n).register_forward_pre_hook(
            lambda _m, args, n=n: seen.setdefault(n, args[0].detach())
        )
        for n in names
    ]
    try:
        with torch.inference_mode():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return seen


def masked_copy(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """A copy of `model` in eval mode with every masked weight set to zero (dense kernels)."""
    copied = copy.deepcopy(unwrap(model)).eval()
    for module in copied.modules():  # training-time overrides (`sparse_kernels`): plain modules
        module.__dict__.pop("forward", None)
    params = dict(copied.named_parameters())
    masks = dict(masks or {})
    unknown = sorted(set(masks) - set(params))
    if unknown:
        raise ConfigError(
            f"masks name parameters the model does not have: {', '.join(unknown[:5])}"
        )
    with torch.no_grad():
        for name, mask in masks.items():
            param = params[name]
            if tuple(mask.shape) != tuple(param.shape):
                raise ConfigError(
                    f"mask {name} has shape {tuple(mask.shape)}, weight has {tuple(param.shape)}"
                )
            param.mul_(mask.to(device=param.device, dtype=torch.bool).view(torch.uint8))
    return copied


def to_sparse(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor] | None = None,
    *,
    max_density: float = MAX_DENSITY,
    min_numel: int = MIN_NUMEL,
    example_input: torch.Tensor | None = None,
) -> nn.Module:
    """A copy of `model` (in eval mode) with masks applied and sparse-enough Linear layers on CSR.

    `masks` maps weight names (`"layers.0.weight"`, as in `SparsityController.masks`) to bool
    tensors; without it the zeros already in the weights are the mask. With `example_input`,
    each candidate layer keeps CSR only if it measured faster than dense on that input (the
    density rule still applies first). The input model is not modified.
    """
    if not 0 <= max_density <= 1:
        raise ConfigError(f"max_density must be in [0, 1], got {max_density}")
    sparse = masked_copy(model, masks)
    candidates = []
    for name, module in sparse.named_modules():
        if isinstance(module, nn.Linear) and module.weight.numel() >= min_numel:
            density = torch.count_nonzero(module.weight).item() / module.weight.numel()
            if density <= max_density:
                candidates.append(name)
    if example_input is not None and candidates:
        inputs = _layer_inputs(sparse, candidates, example_input)
        chosen = []
        with torch.inference_mode():
            for name in candidates:
                if name not in inputs:  # not reached by this input: keep the density rule
                    chosen.append(name)
                    continue
                dense, x = sparse.get_submodule(name), inputs[name]
                csr = SparseLinear.from_linear(dense)
                if _median_time(lambda: csr(x)) < _median_time(lambda: dense(x)):  # noqa: B023
                    chosen.append(name)
        candidates = chosen
    for name in candidates:
        _set_module(sparse, name, SparseLinear.from_linear(sparse.get_submodule(name)))
    return sparse


def sparse_layers(model: nn.Module) -> list[str]:
    """Names of the modules of `model` that run on CSR kernels."""
    return [n for n, m in model.named_modules() if isinstance(m, SparseLinear)]


# --------------------------------------------------------------------------- files
def save_sparse(
    sparse: nn.Module, path: str | Path, *, model: str, dataset: str, width: float = 1.0
) -> None:
    """Write an exported model as a `weights_only`-loadable dict (see `load_sparse`)."""
    atomic_torch_save(
        Path(path),
        {
            "format": EXPORT_FORMAT,
            "model": model,
            "dataset": dataset,
            "width": float(width),
            "sparse_layers": sparse_layers(sparse),
            "state_dict": sparse.state_dict(),
        },
    )


def load_sparse(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild an exported model: `sparsetrain.models.build` + CSR layers + saved weights."""
    from sparsetrain.models import build

    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read exported model {path}: {exc}") from None
    if not isinstance(blob, dict) or blob.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path} is not a sparsetrain CSR export ({EXPORT_FORMAT})")
    model = build(blob["model"], blob["dataset"], blob["width"]).eval()
    state = dict(blob["state_dict"])
    for name in blob["sparse_layers"]:
        layer = model.get_submodule(name)
        if not isinstance(layer, nn.Linear):
            raise CheckpointError(f"{path}: layer {name} of {blob['model']} is not a Linear layer")
        sparse = SparseLinear(torch.zeros(0, 0), layer.bias)
        sparse.out_features, sparse.in_features = layer.out_features, layer.in_features
        sparse.weight = state.pop(f"{name}.weight")  # CSR buffers are assigned, not copied
        _set_module(model, name, sparse)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k.rpartition(".")[0] not in blob["sparse_layers"]]
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match model {blob['model']!r}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model
