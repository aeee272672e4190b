"""sparsetrain: dynamic sparse training for PyTorch.

Three lines turn any training loop into a sparse one::

    ctl = sparsetrain.sparsify(model, optimizer, method="RigL", density=0.2, init="ERK", total_steps=T)
    loss.backward()
    ctl.step()
"""

from sparsetrain.controller import MaskingOptions, SparsityController, sparsify

__version__ = "0.1.0"
__all__ = ["MaskingOptions", "SparsityController", "__version__", "sparsify"]
