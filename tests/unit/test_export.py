"""Sparse (CSR) export, the `sparsetrain export` command, and the CSR training kernels."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import sparsetrain
from sparsetrain.cli import export as cli
from sparsetrain.errors import CheckpointError, ConfigError
from sparsetrain.export import (
    SparseLinear,
    load_sparse,
    masked_copy,
    save_sparse,
    sparse_layers,
    to_sparse,
)
from sparsetrain.models import build
from sparsetrain.ops import CSRPattern, csr_linear


def random_masks(model: nn.Module, density: float, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        name: torch.rand(p.shape, generator=g) < density
        for name, p in sparsetrain.masks.maskable_parameters(model).items()
    }


@pytest.fixture
def lenet():
    torch.manual_seed(0)
    return build("lenet-300-100", "MNIST")  # 784-300-100-10


# --------------------------------------------------------------------------- to_sparse
def test_to_sparse_matches_masked_model_and_uses_csr_only_when_sparse(lenet):
    masks = random_masks(lenet, 0.05)
    masks["fc2.weight"] = torch.ones_like(masks["fc2.weight"])  # a dense layer stays dense
    sparse = to_sparse(lenet, masks)
    assert sparse_layers(sparse) == ["fc1"]  # fc2 dense; fc3 (1000 weights) below min_numel
    assert isinstance(sparse.fc1, SparseLinear) and isinstance(sparse.fc2, nn.Linear)
    x = torch.randn(5, 1, 28, 28)
    with torch.inference_mode():
        assert torch.allclose(sparse(x), masked_copy(lenet, masks)(x), rtol=1e-4, atol=1e-5)


def test_to_sparse_leaves_the_input_model_alone(lenet):
    before = copy.deepcopy(lenet.state_dict())
    to_sparse(lenet, random_masks(lenet, 0.05))
    assert all(torch.equal(before[k], v) for k, v in lenet.state_dict().items())
    assert lenet.training


def test_zeros_in_the_weights_are_the_mask_when_none_given(lenet):
    with torch.no_grad():
        lenet.fc1.weight.mul_(random_masks(lenet, 0.05)["fc1.weight"])
    assert sparse_layers(to_sparse(lenet)) == ["fc1"]


def test_max_density_and_min_numel_decide(lenet):
    masks = random_masks(lenet, 0.3)
    assert sparse_layers(to_sparse(lenet, masks)) == []  # 0.3 > default cut
    assert sparse_layers(to_sparse(lenet, masks, max_density=0.5)) == ["fc1", "fc2"]
    assert sparse_layers(to_sparse(lenet, masks, max_density=0.5, min_numel=1)) == [
        "fc1",
        "fc2",
        "fc3",
    ]


def test_example_input_keeps_csr_only_where_it_measures_faster(lenet):
    masks = random_masks(lenet, 0.02)
    sparse = to_sparse(
        lenet, masks, max_density=1.0, min_numel=1, example_input=torch.randn(64, 784)
    )
    x = torch.randn(7, 784)
    with torch.inference_mode():  # whichever kernels won, the outputs agree
        assert torch.allclose(sparse(x), masked_copy(lenet, masks)(x), rtol=1e-4, atol=1e-5)


def test_convolutions_stay_dense():
    torch.manual_seed(0)
    net = build("lenet5", "MNIST")
    masks = random_masks(net, 0.02)
    sparse = to_sparse(net, masks, min_numel=1)
    assert all(isinstance(m, nn.Conv2d) for n, m in sparse.named_modules() if "conv" in n)
    x = torch.randn(3, 1, 28, 28)
    with torch.inference_mode():
        assert torch.allclose(sparse(x), masked_copy(net, masks)(x), rtol=1e-4, atol=1e-5)


def test_sparse_linear_handles_leading_dimensions_and_no_bias():
    layer = nn.Linear(40, 30, bias=False)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(30, 40) < 0.2)
    sparse = SparseLinear.from_linear(layer)
    x = torch.randn(2, 3, 40)
    with torch.inference_mode():
        assert sparse(x).shape == (2, 3, 30)
        assert torch.allclose(sparse(x), layer(x), atol=1e-5)
    assert "density=" in repr(sparse)


@pytest.mark.parametrize(
    ("masks", "message"),
    [
        ({"nope.weight": torch.ones(2, 2, dtype=torch.bool)}, "does not have"),
        ({"fc1.weight": torch.ones(3, 3, dtype=torch.bool)}, "has shape"),
    ],
)
def test_bad_masks_are_config_errors(lenet, masks, message):
    with pytest.raises(ConfigError, match=message):
        to_sparse(lenet, masks)


def test_max_density_out_of_range(lenet):
    with pytest.raises(ConfigError, match="max_density"):
        to_sparse(lenet, max_density=1.5)


# --------------------------------------------------------------------------- files
def test_save_and_load_round_trip_with_weights_only(lenet, tmp_path):
    masks = random_masks(lenet, 0.05)
    sparse = to_sparse(lenet, masks)
    path = tmp_path / "m.pt"
    save_sparse(sparse, path, model="lenet-300-100", dataset="MNIST")
    blob = torch.load(path, weights_only=True)
    assert blob["sparse_layers"] == ["fc1", "fc2"] and blob["model"] == "lenet-300-100"
    loaded = load_sparse(path)
    assert sparse_layers(loaded) == ["fc1", "fc2"]
    x = torch.randn(4, 1, 28, 28)
    with torch.inference_mode():
        assert torch.allclose(loaded(x), sparse(x), rtol=1e-5, atol=1e-6)


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"model": {}}, path)
    with pytest.raises(CheckpointError, match="not a sparsetrain CSR export"):
        load_sparse(path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_sparse(tmp_path / "junk.pt")


# --------------------------------------------------------------------------- CLI
def make_run(tmp_path, density=0.05, config=True):
    """A run directory as the trainer writes it: .hydra/config.yaml and ckpts/last.pt."""
    torch.manual_seed(0)
    model = build("lenet-300-100", "MNIST")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctl = sparsetrain.sparsify(model, opt, "Static", density=density, init="random", total_steps=1)
    run = tmp_path / "run"
    (run / "ckpts").mkdir(parents=True)
    torch.save(
        {"model": model.state_dict(), "sparsity": ctl.state_dict()}, run / "ckpts" / "last.pt"
    )
    if config:
        (run / ".hydra").mkdir()
        (run / ".hydra" / "config.yaml").write_text(
            "model: lenet-300-100\nwidth: 1.0\ndataset:\n  name: MNIST\n"
        )
    return run, model, ctl.masks


def test_cli_exports_a_run_directory(tmp_path, capsys):
    run, model, masks = make_run(tmp_path)
    assert cli.main([str(run), "--format", "csr"]) == 0
    out = run / "export" / "last_csr.pt"
    assert out.is_file()
    printed = capsys.readouterr().out
    assert "fc1" in printed and "csr" in printed and str(out) in printed
    x = torch.randn(3, 1, 28, 28)
    with torch.inference_mode():
        assert torch.allclose(load_sparse(out)(x), masked_copy(model, masks)(x), atol=1e-5)


def test_cli_exports_a_checkpoint_file_to_out(tmp_path):
    run, _, _ = make_run(tmp_path)
    out = tmp_path / "sub" / "model.pt"
    assert cli.main([str(run / "ckpts" / "last.pt"), "--out", str(out)]) == 0
    assert sparse_layers(load_sparse(out)) == ["fc1", "fc2"]  # 300x100 = 30000 >= min_numel


def test_cli_reads_the_checkpoint_config_record_without_hydra_dir(tmp_path):
    run, _, _ = make_run(tmp_path, config=False)
    ckpt = torch.load(run / "ckpts" / "last.pt", weights_only=True)
    ckpt["config"] = {"model": "lenet-300-100", "dataset.name": "MNIST", "width": 1.0}
    torch.save(ckpt, run / "ckpts" / "last.pt")
    assert cli.main([str(run), "--max-density", "0.01"]) == 0  # nothing sparse enough
    assert sparse_layers(load_sparse(run / "export" / "last_csr.pt")) == []


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "no run directory or checkpoint"),
        ("no-config", "cannot tell which model"),
        ("empty-run", "no checkpoint"),
        ("wrong-model", "does not match model"),
    ],
)
def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, setup, message):
    run, _, _ = make_run(tmp_path, config=setup != "no-config")
    target = str(run)
    if setup == "missing":
        target = str(tmp_path / "nowhere")
    elif setup == "empty-run":
        (run / "ckpts" / "last.pt").unlink()
    elif setup == "wrong-model":
        (run / ".hydra" / "config.yaml").write_text("model: lenet5\ndataset:\n  name: MNIST\n")
    assert cli.main([target]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_unknown_format_is_a_usage_error(tmp_path, capsys):
    run, _, _ = make_run(tmp_path)
    assert cli.main([str(run), "--format", "coo"]) == 2
    assert "invalid choice" in capsys.readouterr().err


# --------------------------------------------------------------------------- CSR training
@pytest.mark.parametrize("dense_grad", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_csr_linear_matches_masked_dense_linear(dense_grad, bias):
    torch.manual_seed(0)
    mask = torch.rand(30, 20) < 0.3
    weight = (torch.randn(30, 20) * mask).requires_grad_()
    b = torch.randn(30, requires_grad=True) if bias else None
    x = torch.randn(4, 5, 20, requires_grad=True)
    inputs = (x, weight) + ((b,) if bias else ())
    y = csr_linear(x, weight, b, CSRPattern(mask), dense_grad)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, inputs, grad)
    y_ref = nn.functional.linear(x, weight, b)
    want = list(torch.autograd.grad(y_ref, inputs, grad))
    if not dense_grad:
        want[1] = want[1] * mask  # the sparse weight gradient is zero off the mask
    assert torch.allclose(y, y_ref, atol=1e-5)
    for g_got, g_want in zip(got, want):
        assert torch.allclose(g_got, g_want, atol=1e-4)


def test_sparse_kernels_option_trains_like_dense_kernels():
    """RigL with `sparse_kernels=True`: same masks, weights equal to float rounding."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))
    x, y = torch.randn(32, 256), torch.randint(0, 10, (32,))
    runs = {}
    for sparse_kernels in (False, True):
        net = copy.deepcopy(base)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        ctl = sparsetrain.sparsify(
            net, opt, "RigL", density=0.05, init="ERK", total_steps=40, interval=10,
            sparse_kernels=sparse_kernels,
        )  # fmt: skip
        for _ in range(25):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        runs[sparse_kernels] = (ctl, net)
    (ctl_a, net_a), (ctl_b, net_b) = runs[False], runs[True]
    assert list(ctl_b._csr) == ["0.weight"] and not ctl_a._csr
    assert len(ctl_b.update_log) == 2
    assert all(torch.equal(ctl_a.masks[n], ctl_b.masks[n]) for n in ctl_a.masks)
    for p_a, p_b in zip(net_a.parameters(), net_b.parameters()):
        assert torch.allclose(p_a, p_b, atol=1e-5)
    masked = ~ctl_b.masks["0.weight"]
    assert not net_b[0].weight[masked].any()
