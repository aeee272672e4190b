"""Model zoo: `build(name, dataset, width=1.0)` through a typed registry.

| name                | model                                                                  |
|---------------------|------------------------------------------------------------------------|
| `lenet-300-100`     | 784-300-100-10 MLP (flattens any input)                                |
| `lenet5`            | LeNet-5-Caffe: conv 20@5x5, pool, conv 50@5x5, pool, fc 500, fc 10     |
| `mlp`               | MLP with configurable hidden widths (default 1000-1000)                |
| `wrn-22-2`          | WideResNet-22-2 with the reference's parameter names; log_softmax out  |
| `resnet50`          | the reference's CIFAR ResNet-50 (3x3 stem, no max-pool)                |
| `resnet50-imagenet` | standard ResNet-50 for 224x224 inputs (7x7 stem + max-pool)            |

Input channels, image size and the number of classes come from the data set
(`sparsetrain.data.dataset_info(name)`, or any object with `in_channels`, `image_size`,
`num_classes`). `width` multiplies every hidden width / channel count (rounded half up, at least
one); the input channels and the classifier's outputs are never scaled. Small_Dense uses it.
Models return logits, except `wrn-22-2`, which returns log-probabilities like the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn

from sparsetrain.errors import ConfigError
from sparsetrain.models._common import InputSpec, scaled
from sparsetrain.models.lenet import lenet5, lenet_300_100
from sparsetrain.models.mlp import mlp
from sparsetrain.models.resnet import resnet50, resnet50_imagenet
from sparsetrain.models.wrn import wrn_22_2
from sparsetrain.registry import Registry

__all__ = ["MODELS", "InputSpec", "build", "input_spec", "names", "scaled"]

#: name -> builder(info, width=1.0, **options) -> nn.Module
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
MODELS.add("lenet-300-100", lenet_300_100, "lenet300-100")
MODELS.add("lenet5", lenet5, "lenet5-caffe", "lenet-5-caffe")
MODELS.add("mlp", mlp)
MODELS.add("wrn-22-2", wrn_22_2)
MODELS.add("resnet50", resnet50, "resnet50-cifar")
MODELS.add("resnet50-imagenet", resnet50_imagenet)


def input_spec(dataset: str | InputSpec) -> InputSpec:
    """The data set facts a model needs: a `DatasetInfo` (or look-alike) passes through; a
    name is looked up with `sparsetrain.data.dataset_info` (unknown names -> ConfigError)."""
    if not isinstance(dataset, str):
        missing = [
            a for a in ("in_channels", "image_size", "num_classes") if not hasattr(dataset, a)
        ]
        if missing:
            raise ConfigError(
                f"dataset must be a data set name or have in_channels, image_size and "
                f"num_classes; {type(dataset).__name__} lacks {', '.join(missing)}"
            )
        return dataset
    from sparsetrain.data import dataset_info

    return dataset_info(dataset)


def build(name: str, dataset: str | InputSpec, width: float = 1.0, **options: Any) -> nn.Module:
    """Build model `name` for `dataset` with channel/hidden-width multiplier `width`.

    Extra keyword options go to the model's builder, e.g. `build("mlp", ds, hidden=(300, 100))`
    or `build("wrn-22-2", ds, drop_rate=0.0)`.
    """
    builder = MODELS.get(name)
    if not isinstance(width, int | float) or not 0 < width < math.inf:
        raise ConfigError(f"model width multiplier must be > 0, got {width!r}")
    try:
        return builder(input_spec(dataset), width=float(width), **options)
    except TypeError as exc:  # an option the builder does not take
        if "unexpected keyword" in str(exc):
            raise ConfigError(f"model {MODELS.canonical(name)!r}: {exc}") from None
        raise


def names() -> list[str]:
    """Canonical model names (aliases are accepted by `build` too)."""
    return MODELS.names()
