"""Which parameters are masked, and small helpers over bool masks.

Masked: the weight of every Conv2d and Linear layer, the final classifier included. Biases and
normalisation parameters stay dense and are not counted in the density budget (REFERENCE.md).
"""

from __future__ import annotations

import torch
from torch import nn

from sparsetrain.errors import ConfigError

MASKED_MODULE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def maskable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """{parameter name: weight} of every Conv2d and Linear layer, in module order.

    Examples:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
        >>> list(maskable_parameters(net))  # biases and BatchNorm stay dense
        ['0.weight', '3.weight']
    """
    model = unwrap(model)
    params = {
        f"{name}.weight" if name else "weight": module.weight
        for name, module in model.named_modules()
        if isinstance(module, MASKED_MODULE_TYPES) and module.weight is not None
    }
    if not params:
        raise ConfigError(
            f"{type(model).__name__} has no maskable layers: sparsetrain masks the weights of "
            "nn.Conv2d and nn.Linear modules"
        )
    return params


def group_size(shape: tuple[int, ...] | torch.Size, structured: bool) -> int:
    """Entries that switch together: a whole k×k kernel for structured conv masks, else 1."""
    if structured and len(shape) == 4:
        return shape[2] * shape[3]
    return 1


def count_active(masks: dict[str, torch.Tensor]) -> dict[str, int]:
    """Active entries per layer (host sync: call at updates and logging only)."""
    return {name: int(mask.sum()) for name, mask in masks.items()}


@torch.no_grad()
def rescale_to_fan_in(weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Scale each output unit's weights by sqrt(dense fan-in / active fan-in), in place.

    Why: a dense initialiser (Kaiming, LeCun) sets the weight variance for the dense fan-in; a
    unit keeping a fraction d of its inputs then starts with an output variance d times too
    small, and the shrinkage compounds layer by layer in networks without normalisation.
    Rescaling restores the variance the initialiser intended (the sparsity-aware
    initialisation of Evci et al. 2022, "Gradient flow in sparse neural networks"). Units with
    no active input are left as they are.

    Examples:
        >>> import torch
        >>> w = torch.ones(2, 4)
        >>> m = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
        >>> rescale_to_fan_in(w, m)
        >>> w[:, 0].tolist()  # unit 0 keeps 1 of 4 inputs: x sqrt(4); unit 1 is dense: x 1
        [2.0, 1.0]
    """
    rows = mask.reshape(mask.shape[0], -1)
    fan_in = rows.sum(1).to(weight.dtype)
    scale = torch.where(fan_in > 0, (rows.shape[1] / fan_in.clamp(min=1)).sqrt(), 1.0)
    weight.mul_(scale.view(-1, *([1] * (weight.dim() - 1))))
