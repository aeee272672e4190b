"""sparsetrain in your own PyTorch training loop: the three-line API.

    ctl = sparsetrain.sparsify(model, optimizer, method="RigL", density=0.1, total_steps=T)
    loss.backward()
    optimizer.step()          # (or ctl.step()) masks gradients, steps, re-applies masks, updates

Trains a small CNN with RigL at 10 % density on scikit-learn's 8x8 digits (bundled with
scikit-learn, no download) in a few seconds on one CPU core; without scikit-learn it uses a
synthetic data set. Run:  python examples/custom_loop.py [--method SET] [--density 0.2]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import sparsetrain
from sparsetrain.algorithms import METHODS


def load_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): digits as float (N, 1, 8, 8), or synthetic data."""
    try:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
    except ImportError:  # synthetic: the class is the brightest of 10 fixed pixel patterns
        g = torch.Generator().manual_seed(seed)
        patterns = torch.rand(10, 1, 8, 8, generator=g)
        y = torch.randint(0, 10, (1800,), generator=g)
        x = patterns[y] + 0.3 * torch.randn(1800, 1, 8, 8, generator=g)
    x = (x - x.mean()) / x.std()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_test = len(y) // 5
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="RigL")
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--init", default="ERK")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--interval", type=int, default=20, help="ΔT of step_end methods (RigL)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = load_data(args.seed)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    steps_per_epoch = -(-len(y_train) // args.batch_size)

    # RigL updates every `interval` optimizer steps; SET/SNFS every epoch (apply_when=epoch_end)
    step_end = METHODS.get(args.method).option("apply_when") == "step_end"
    options = {"interval": args.interval} if step_end else {}

    # 1. one line: masks drawn (exact per-layer budgets), optimizer hooks attached
    ctl = sparsetrain.sparsify(
        model,
        optimizer,
        method=args.method,
        density=args.density,
        init=args.init,
        total_steps=args.epochs * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        seed=args.seed,
        **options,
    )

    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(y_train))
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            loss.backward()  # 2.
            optimizer.step()  # 3. (the controller rides on the optimizer's step hooks)
        ctl.end_epoch()  # only needed by apply_when="epoch_end" methods (SET, SNFS)

        model.eval()
        with torch.no_grad():
            accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        print(
            f"epoch {epoch + 1}: loss {loss.item():.3f}  test accuracy {accuracy:.3f}  "
            f"density {ctl.density():.3f}  mask updates {len(ctl.update_log)}"
        )

    # every masked weight is exactly zero, and each layer holds exactly its budget
    params = dict(model.named_parameters())
    assert all(not params[n][~m].any() for n, m in ctl.masks.items())
    print(f"per-layer densities: { {n: round(d, 3) for n, d in ctl.layer_densities().items()} }")
    print(f"{args.method} at density {ctl.density():.3f}: {time.perf_counter() - start:.1f} s")
    return {"accuracy": accuracy, "density": ctl.density(), "updates": len(ctl.update_log)}


if __name__ == "__main__":
    main()
