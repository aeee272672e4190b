"""sparsetrain: dynamic sparse training for PyTorch.

    ctl = sparsetrain.sparsify(model, optimizer, method="RigL", density=0.2, init="ERK",
                               total_steps=T)
    loss.backward(); ctl.step()
"""

__version__ = "0.1.0"
