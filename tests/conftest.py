"""Shared fixtures: tiny models and a training driver for the engine tests."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings
from torch import nn

torch.set_num_threads(1)

# `make test` (CI) draws the same property-test examples every run, so main stays green or red
# for a reason; HYPOTHESIS_PROFILE=explore draws new examples on each run, to hunt for bugs.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


class TinyNet(nn.Module):
    """Conv → conv → linear → linear on 1×8×8 inputs: small enough to reason about, with
    every kind of masked layer (first conv, inner conv, hidden linear, classifier)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def tiny_batches(n_batches: int, seed: int = 0, batch: int = 16):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 1, 8, 8, generator=g), torch.randint(0, 10, (batch,), generator=g))
        for _ in range(n_batches)
    ]


def run_steps(model, optimizer, ctl, batches, steps_per_epoch=None, on_step=None):
    """The plain user loop of the 3-line API."""
    for i, (x, y) in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        ctl.step()
        if steps_per_epoch and (i + 1) % steps_per_epoch == 0:
            ctl.end_epoch()
        if on_step is not None:
            on_step(i)


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinyNet()


def compose_config(*overrides: str, hydra: bool = False):
    """The composed run config for `overrides`, as `sparsetrain <overrides>` would see it."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from sparsetrain.config import register_configs

    register_configs()
    if GlobalHydra.instance().is_initialized():  # inside a module-scoped hydra_ctx fixture
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)
    with initialize_config_module("sparsetrain.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


@pytest.fixture(scope="module")
def hydra_ctx():
    """Keep one Hydra context open for a module that composes many configs."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from sparsetrain.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("sparsetrain.conf", version_base="1.3"):
        yield
    GlobalHydra.instance().clear()
