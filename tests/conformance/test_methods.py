"""Conformance suite parametrised over the method registry and the inits.

For every method and init: the exact integer budget holds after init and after every update,
masked weights stay exactly zero, the same seed gives the same masks, and state_dict()
round-trips so a resumed run continues bit-identically.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tests.conftest import TinyNet, run_steps, tiny_batches

import sparsetrain
from sparsetrain.algorithms import METHODS
from sparsetrain.errors import ConfigError

STEPS, SPE = 60, 10  # 6 epochs of 10 steps
INITS = ["random", "ER", "ERK", "struct-random", "struct-ERK"]
FAST = {"interval": 5, "start_when": 0}  # several updates within 60 steps


def options_for(method: str, lottery_path: str | None) -> dict:
    spec = METHODS.get(method)
    opts: dict = {"total_steps": STEPS, "steps_per_epoch": SPE, "seed": 3}
    if spec.option("apply_when") == "step_end" and not spec.dense_model:
        opts.update(FAST)
    if spec.pruning:
        opts.update(interval=5, start_when=5, end_when=40)
    if spec.init_from_checkpoint:
        opts["lottery_mask_path"] = lottery_path
    if spec.option("apply_when") == "epoch_end":
        opts["end_when"] = 5
    return opts


@pytest.fixture(scope="module")
def lottery_ckpt(tmp_path_factory):
    """A Pruning run's final checkpoint, as the trainer writes it."""
    torch.manual_seed(1)
    net = TinyNet()
    init = copy.deepcopy(net.state_dict())
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    ctl = sparsetrain.sparsify(
        net, opt, "Pruning", density=0.3, total_steps=40, interval=5, start_when=5, end_when=30
    )
    run_steps(net, opt, ctl, tiny_batches(40))
    path = tmp_path_factory.mktemp("pruning") / "last.pt"
    torch.save({"model": net.state_dict(), "sparsity": ctl.state_dict(), "init_model": init}, path)
    return str(path)


OPTIMIZERS = {
    "SGD": lambda params: torch.optim.SGD(
        params, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True
    ),
    "Adam": lambda params: torch.optim.Adam(params, lr=1e-2, weight_decay=5e-4),
    "AdamW-amsgrad": lambda params: torch.optim.AdamW(params, lr=1e-2, amsgrad=True),
}


def build(method, init, lottery_ckpt, seed=0, optimizer="SGD"):
    torch.manual_seed(seed)
    net = TinyNet()
    opt = OPTIMIZERS[optimizer](net.parameters())
    spec = METHODS.get(method)
    kwargs = options_for(method, lottery_ckpt)
    if spec.init_from_checkpoint:
        init = "lottery"
    ctl = sparsetrain.sparsify(net, opt, method, density=0.25, init=init, **kwargs)
    return net, opt, ctl


def check_invariants(net, ctl):
    params = dict(net.named_parameters())
    for name, mask in ctl.masks.items():
        layer = ctl.layers[name]
        assert int(mask.sum()) == layer.budget, name  # exact integer budget
        assert not params[name][~mask].any(), f"{name}: masked weight not zero"
    if not ctl.spec.pruning and ctl.options.redistribution_mode == "none" and ctl.layers:
        # without redistribution each layer keeps its init budget
        for name, layer in ctl.layers.items():
            assert layer.budget == ctl._initial_budgets[name]


def _inits(method: str) -> list[str]:
    spec = METHODS.get(method)
    if spec.init_from_checkpoint or spec.dense_model:
        return ["-"]
    if spec.option("redistribution_mode", "none") != "none":
        return [i for i in INITS if not i.startswith("struct")]
    return INITS


METHOD_INIT = [(m, i) for m in METHODS.names() for i in _inits(m)]


def test_redistribution_refuses_structured_masks():
    with pytest.raises(ConfigError, match="structured"):
        build("SNFS", "struct-ERK", None)


@pytest.mark.parametrize(("method", "init"), METHOD_INIT)
def test_budget_exact_throughout(method, init, lottery_ckpt):
    net, opt, ctl = build(method, None if init == "-" else init, lottery_ckpt)
    ctl._initial_budgets = {n: layer.budget for n, layer in ctl.layers.items()}
    check_invariants(net, ctl)
    target = ctl.density()
    run_steps(net, opt, ctl, tiny_batches(STEPS), SPE, on_step=lambda i: check_invariants(net, ctl))
    if METHODS.get(method).dynamic:
        assert ctl.update_log, "a dynamic method made no mask update"
    if METHODS.get(method).pruning:
        assert abs(ctl.density() - 0.25) < 1e-3
    elif not METHODS.get(method).dense_model:
        assert ctl.density() == target  # no drift
        n_layers = len(ctl.layers)
        total = sum(layer.param.numel() for layer in ctl.layers.values())
        if METHODS.get(method).init_from_checkpoint:
            assert abs(ctl.density() - 0.3) * total <= n_layers
        elif not init.startswith("struct"):
            assert abs(ctl.density() - 0.25) * total <= n_layers


@pytest.mark.parametrize("optimizer", ["Adam", "AdamW-amsgrad"])
@pytest.mark.parametrize("method", METHODS.names())
def test_masked_weights_stay_zero_with_adam(method, optimizer, lottery_ckpt):
    """With Adam/AdamW the engine skips re-masking weights after each step, relying on masked
    weights, gradients and optimizer state all being 0; check that this holds at every step,
    across updates (weight decay, bias correction and amsgrad's running max included)."""
    net, opt, ctl = build(method, "ERK", lottery_ckpt, optimizer=optimizer)
    ctl._initial_budgets = {n: layer.budget for n, layer in ctl.layers.items()}
    run_steps(net, opt, ctl, tiny_batches(STEPS), SPE, on_step=lambda i: check_invariants(net, ctl))
    assert not ctl._remask_after_step or ctl.options.dense_gradients
    if METHODS.get(method).dynamic:
        assert ctl.update_log, "a dynamic method made no mask update"


@pytest.mark.parametrize(("method", "init"), METHOD_INIT)
def test_deterministic_same_seed_same_masks(method, init, lottery_ckpt):
    init = None if init == "-" else init
    runs = []
    for _ in range(2):
        net, opt, ctl = build(method, init, lottery_ckpt)
        run_steps(net, opt, ctl, tiny_batches(STEPS), SPE)
        runs.append((ctl.masks, net.state_dict()))
    (m1, w1), (m2, w2) = runs
    assert all(torch.equal(m1[n], m2[n]) for n in m1)
    assert all(torch.equal(w1[n], w2[n]) for n in w1)


@pytest.mark.parametrize("method", METHODS.names())
def test_state_dict_roundtrip_resumes_exactly(method, lottery_ckpt):
    batches = tiny_batches(STEPS)
    net, opt, ctl = build(method, "ERK", lottery_ckpt)
    run_steps(net, opt, ctl, batches, SPE)
    reference = (copy.deepcopy(net.state_dict()), {n: m.clone() for n, m in ctl.masks.items()})

    net, opt, ctl = build(method, "ERK", lottery_ckpt)
    run_steps(net, opt, ctl, batches[:25], SPE)  # stop mid-epoch, between updates
    saved = copy.deepcopy((net.state_dict(), opt.state_dict(), ctl.state_dict()))
    net2, opt2, ctl2 = build(method, "ERK", lottery_ckpt, seed=99)  # different fresh init
    net2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    ctl2.load_state_dict(saved[2])
    for i, (x, y) in enumerate(batches[25:], start=25):
        opt2.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net2(x), y).backward()
        ctl2.step()
        if (i + 1) % SPE == 0:
            ctl2.end_epoch()
    assert all(torch.equal(reference[1][n], ctl2.masks[n]) for n in ctl2.masks)
    assert all(torch.equal(reference[0][n], v) for n, v in net2.state_dict().items())


@pytest.mark.parametrize("method", ["Lottery", "RigL_reinit"])
def test_scale_init_spares_only_the_lottery_rewind(method, lottery_ckpt):
    """`scale_init`: Lottery keeps the rewound step-0 weights exactly; RigL_reinit, whose
    weights are freshly initialised, gets them rescaled to the sparse fan-in."""
    opts = options_for(method, lottery_ckpt)
    torch.manual_seed(0)
    plain_net = TinyNet()
    sparsetrain.sparsify(  # the same model without scale_init
        plain_net, torch.optim.SGD(plain_net.parameters(), lr=0.1), method, 0.25, "lottery", **opts
    )
    torch.manual_seed(0)
    net = TinyNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    ctl = sparsetrain.sparsify(net, opt, method, 0.25, "lottery", scale_init=True, **opts)
    weights, plain_weights = dict(net.named_parameters()), dict(plain_net.named_parameters())
    for name, mask in ctl.masks.items():
        same = torch.equal(weights[name], plain_weights[name])
        sparse_rows = bool((mask.reshape(mask.shape[0], -1).sum(1) < mask[0].numel()).any())
        assert same if method == "Lottery" or not sparse_rows else not same, name
