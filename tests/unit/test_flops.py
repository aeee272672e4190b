"""FLOPs: tracing by hand, the per-step accountant against the REFERENCE.md closed forms,
the published CIFAR-10 WRN-22-2 table, checkpoints, and the `sparsetrain flops` CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from sparsetrain import flops, models
from sparsetrain.errors import CheckpointError, ConfigError
from sparsetrain.flops import FlopsAccountant, dense_layer_flops, report, rigl_train_ratio
from sparsetrain.schedules import is_update_step, zhu_gupta_density


# --------------------------------------------------------------------------- tracing
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 4 * 4, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), 4)
        return self.fc(torch.flatten(x, 1))


def test_dense_layer_flops_by_hand():
    net = Tiny()
    assert dense_layer_flops(net, (1, 4, 4)) == {
        "conv.weight": 2 * 4 * 4 * (1 * 3 * 3),  # outputs x MACs per output
        "fc.weight": 3 * 32,
    }


def test_trace_is_cached_and_side_effect_free():
    net = Tiny().train()
    before = net.bn.running_mean.clone(), int(net.bn.num_batches_tracked)
    a = dense_layer_flops(net, (1, 4, 4))
    b = dense_layer_flops(net, (1, 4, 4))
    assert a == b and net.calls == 1  # traced once per (model, input shape)
    assert net.training and net.bn.training  # modes restored
    assert torch.equal(net.bn.running_mean, before[0])
    assert int(net.bn.num_batches_tracked) == before[1]
    assert dense_layer_flops(net, (1, 8, 8))["conv.weight"] == 2 * 8 * 8 * 9
    assert net.calls == 2


def test_lenet5_and_wrn_flops_by_hand():
    lenet = dense_layer_flops(models.build("lenet5", "MNIST"), (1, 28, 28))
    assert lenet == {
        "conv1.weight": 20 * 24 * 24 * 25,
        "conv2.weight": 50 * 8 * 8 * 20 * 25,
        "fc3.weight": 800 * 500,
        "fc4.weight": 500 * 10,
    }
    with torch.device("meta"):
        wrn = models.build("wrn-22-2", "CIFAR10")
    f = dense_layer_flops(wrn, (3, 32, 32))
    assert len(f) == 23
    assert f["conv1.weight"] == 16 * 32 * 32 * 27
    assert f["block1.layer.0.convShortcut.weight"] == 32 * 32 * 32 * 16
    assert f["block2.layer.0.conv1.weight"] == 64 * 16 * 16 * 32 * 9  # stride 2
    assert f["block3.layer.2.conv2.weight"] == 128 * 8 * 8 * 128 * 9
    assert f["fc.weight"] == 1280
    assert sum(f.values()) == 157_730_048


def test_resnet50_imagenet_flops():
    with torch.device("meta"):
        net = models.build("resnet50-imagenet", "ImageNet")
    total = sum(dense_layer_flops(net, (3, 224, 224)).values())
    assert total == pytest.approx(4.09e9, rel=0.01)  # the well-known ~4.1 GMACs


# --------------------------------------------------------------------------- accountant
LAYERS = {"a": 1000, "b": 3000, "c": 6000}  # hand-made dense MACs; f_D = 10,000
DENS = {"a": 1.0, "b": 0.3, "c": 0.1}  # f_S = 1000 + 900 + 600 = 2,500 -> s = 0.25
S = 0.25


def make(k: int = 1, **kw) -> FlopsAccountant:
    acc = FlopsAccountant(LAYERS, training_multiplier=k, **kw)
    acc.on_masks_changed(DENS)
    return acc


def test_static_and_set():
    acc = make()
    assert acc.inference_ratio() == pytest.approx(S)
    for _ in range(1000):  # SET churns masks at epoch ends but keeps layer densities
        acc.on_step(dense_grad=False)
    assert acc.train_ratio() == pytest.approx(S)  # 3 f_S / 3 f_D
    assert acc.summary()["train_flops_total"] == pytest.approx(1000 * 3 * 2500)


def test_snfs_dense_gradients_every_step():
    acc = make()
    for _ in range(500):
        acc.on_step(dense_grad=True)
    assert acc.train_ratio() == pytest.approx((2 * S + 1) / 3)
    assert acc.dense_grad_steps == 500
    assert acc.inference_ratio() == pytest.approx(S)


@pytest.mark.parametrize("interval", [10, 100])
def test_rigl_matches_closed_form(interval):
    total = 100 * interval
    acc = make()
    for t in range(1, total + 1):  # controller: tick t = steps finished after this one
        acc.on_step(dense_grad=is_update_step(t, 0, total + 1, interval))
    # REFERENCE.md: (3 f_S ΔT + 2 f_S + f_D) / (ΔT + 1), relative to 3 f_D. Counting steps
    # gives one dense-gradient step per ΔT (not per ΔT + 1): a (1 − s)/(3 ΔT (ΔT + 1)) gap.
    gap = (1 - S) / (3 * interval * (interval + 1))
    assert acc.train_ratio() == pytest.approx(rigl_train_ratio(S, interval) + gap)
    assert gap < 3e-3
    exact = (3 * S * (total - 100) + 100 * (2 * S + 1)) / (3 * total)
    assert acc.train_ratio() == pytest.approx(exact)


def test_rigl_dense_grads_only_while_updating():
    total, interval, end = 4000, 100, 3000
    acc = make()
    for t in range(1, total + 1):
        acc.on_step(dense_grad=is_update_step(t, 0, end, interval))
    expected = 0.75 * rigl_train_ratio(S, interval) + 0.25 * S
    assert acc.train_ratio() == pytest.approx(expected, abs=2e-3)


def test_training_multiplier_is_ratio_to_a_1x_dense_run():
    acc = make(k=2)
    for _ in range(200):  # a 2x run takes twice the steps of the 1x run
        acc.on_step(dense_grad=False)
    assert acc.train_ratio() == pytest.approx(2 * S)
    assert acc.inference_ratio() == pytest.approx(S)


def test_pruning_time_average_matches_closed_form():
    """Zhu-Gupta from dense to 0.2, pruning every ΔT steps: the accountant's per-step average
    equals the time-average forward cost (the reference report's convention)."""
    total, t0, t1, interval, final = 10_000, 100, 7_500, 100, 0.2
    acc = FlopsAccountant(LAYERS)
    acc.on_masks_changed(dict.fromkeys(LAYERS, 1.0))
    forward_cost = []
    for t in range(1, total + 1):
        acc.on_step(dense_grad=False)
        forward_cost.append(acc.sparse_flops / acc.dense_flops)
        if (t >= t0 and (t - t0) % interval == 0 and t <= t1) or t == t1:
            d = zhu_gupta_density(t, 1.0, final, t0, t1)
            acc.on_masks_changed(dict.fromkeys(LAYERS, d))
    assert acc.train_ratio() == pytest.approx(sum(forward_cost) / total)
    assert acc.inference_ratio() == pytest.approx(final)
    # closed form of the schedule (discrete and continuous) as report() computes it
    r = report("lenet5", "MNIST", "Pruning", final, start_when=t0, end_when=t1,
               interval=interval, total_steps=total)  # fmt: skip
    assert r["estimate"] is True
    assert r["train"] == pytest.approx(acc.train_ratio(), abs=2e-3)
    mean_s = (t0 * 0 + (t1 - t0) * 0.8 * 0.75 + (total - t1) * 0.8) / total
    assert acc.train_ratio() == pytest.approx(1 - mean_s, abs=5e-3)


def test_reference_pruning_row_from_its_published_test_figure():
    """With the published trained-mask test cost (0.27), the schedule gives the published
    training cost 0.41 (reference CIFAR schedule: t0 700, t_end 65918, 87891 steps)."""
    frac = flops._pruning_mean_sparsity_fraction(700 / 87891, 65918 / 87891, 100, 87891)
    assert 1 - (1 - 0.27) * frac == pytest.approx(0.41, abs=0.01)


def test_dense_run_without_masks_and_small_dense_reference():
    acc = FlopsAccountant(LAYERS)
    for _ in range(10):
        acc.on_step(False)
    assert acc.train_ratio() == 1.0 and acc.inference_ratio() == 1.0
    small = FlopsAccountant({"a": 200, "b": 1800}, reference_flops=10_000)
    small.on_step(False)
    assert small.train_ratio() == pytest.approx(0.2) and small.inference_ratio() == pytest.approx(
        0.2
    )


def test_state_dict_round_trip(tmp_path):
    acc = make(k=2)
    for t in range(37):
        acc.on_step(dense_grad=t % 5 == 0)
    path = tmp_path / "flops.pt"
    torch.save({"flops": acc.state_dict()}, path)
    sd = torch.load(path, weights_only=True)["flops"]
    fresh = FlopsAccountant(LAYERS)
    fresh.load_state_dict(sd)
    assert fresh.summary() == acc.summary()
    fresh.on_step(True)
    acc.on_step(True)
    assert fresh.summary() == acc.summary()
    other = FlopsAccountant({"a": 1})
    with pytest.raises(CheckpointError):
        other.load_state_dict(sd)


def test_bad_inputs():
    acc = make()
    with pytest.raises(ConfigError, match="never traced"):
        acc.on_masks_changed({"zzz": 0.5})
    with pytest.raises(ConfigError):
        FlopsAccountant({})
    with pytest.raises(ConfigError):
        FlopsAccountant(LAYERS, training_multiplier=0)


# --------------------------------------------------------------------------- report
PUBLISHED = [  # CIFAR-10, WRN-22-2, density 0.2: (method, init, k, train, test)
    ("Small_Dense", None, 1, 0.20, 0.20),
    ("RigL", "random", 1, 0.20, 0.20),
    ("RigL", "ERK", 1, 0.35, 0.35),
    ("RigL", "random", 2, 0.41, 0.20),
    ("RigL", "ERK", 2, 0.70, 0.35),
]


@pytest.mark.parametrize(("method", "init", "k", "train", "test"), PUBLISHED)
def test_reproduces_published_table(method, init, k, train, test):
    r = report("wrn-22-2", "CIFAR10", method, 0.2, init, training_multiplier=k)
    assert r["train"] == pytest.approx(train, abs=0.01)
    assert r["test"] == pytest.approx(test, abs=0.01)
    assert r["estimate"] is False
    assert set(r["layers"]) >= {"conv1.weight", "fc.weight"}
    for layer in r["layers"].values():
        assert 0 < layer["density"] <= 1 and layer["dense_flops"] > 0


def test_report_layers_and_other_methods():
    r = report("wrn-22-2", "CIFAR10", "Static", 0.2, "ERK")
    assert len(r["layers"]) == 23 and r["dense_flops"] == 157_730_048
    assert r["train"] == pytest.approx(r["test"])
    snfs = report("wrn-22-2", "CIFAR10", "SNFS", 0.2, "random")
    assert snfs["train"] == pytest.approx((2 * snfs["test"] + 1) / 3)
    dense = report("wrn-22-2", "CIFAR10", "Dense", 0.2)
    assert dense["train"] == dense["test"] == 1.0
    with pytest.raises(ConfigError, match="masks_from"):
        report("wrn-22-2", "CIFAR10", "Lottery", 0.2)
    with pytest.raises(ConfigError, match="masking method"):
        report("wrn-22-2", "CIFAR10", "Magic", 0.2)
    with pytest.raises(ConfigError, match="density"):
        report("wrn-22-2", "CIFAR10", "RigL", 1.5)
    with pytest.raises(ConfigError, match="total_steps"):
        report("wrn-22-2", "CIFAR10", "RigL", 0.2, end_when=65918)


@pytest.mark.parametrize(
    ("model", "dataset", "shape_classes"),
    [("resnet50", "CIFAR100", 100), ("resnet50-imagenet", "ImageNet", 1000)],
)
@pytest.mark.parametrize(("density", "init"), [(0.1, "ERK"), (0.2, "random"), (0.5, "ER")])
def test_report_resnets(model, dataset, shape_classes, density, init):
    r = report(model, dataset, "RigL", density, init)
    assert r["layers"]["fc.weight"]["shape"] == [shape_classes, 2048]
    assert len(r["layers"]) == 54
    assert 0 < r["test"] < 1 and r["train"] > r["test"]
    budget = sum(v["density"] * math.prod(v["shape"]) for v in r["layers"].values())
    total = sum(math.prod(v["shape"]) for v in r["layers"].values())
    assert budget / total == pytest.approx(density, abs=1e-6)


def test_report_small_dense_and_pruning_on_resnet50_imagenet():
    small = report("resnet50-imagenet", "ImageNet", "Small_Dense", 0.2)
    assert 0.1 < small["test"] < 0.3 and small["width"] < 1
    pruning = report("resnet50-imagenet", "ImageNet", "Pruning", 0.2)
    assert pruning["estimate"] is True and pruning["test"] == pytest.approx(0.2)


# --------------------------------------------------------------------------- measured runs
def _train(method: str, init: str, steps: int = 40, **options):
    """A short real run of the controller with the accountant attached (digits-sized)."""
    from sparsetrain.controller import sparsify

    torch.manual_seed(0)
    model = models.build("lenet5", "digits")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctl = sparsify(model, opt, method=method, density=0.3, init=init, total_steps=steps,
                   steps_per_epoch=10, seed=0, **options)  # fmt: skip
    acc = FlopsAccountant.for_model(model, (1, 8, 8))
    ctl.attach_flops(acc)
    acc.trace = []  # per-step forward cost seen by on_step
    on_step = acc.on_step

    def recording_on_step(dense_grad: bool = False) -> None:
        acc.trace.append(acc.sparse_flops / acc.dense_flops)
        on_step(dense_grad)

    acc.on_step = recording_on_step
    x, y = torch.randn(steps, 16, 1, 8, 8), torch.randint(0, 10, (steps, 16))
    for t in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[t]), y[t]).backward()
        ctl.step()
        if (t + 1) % 10 == 0:
            ctl.end_epoch()
    return ctl, acc


@pytest.mark.parametrize(
    ("method", "init", "options"),
    [
        ("Static", "ERK", {}),
        ("SET", "random", {}),
        ("SNFS", "random", {}),
        ("RigL", "ERK", {"interval": 5, "end_when": 0.75}),
    ],
)
def test_measured_run_agrees_with_closed_form(method, init, options):
    ctl, acc = _train(method, init, **options)
    s = acc.inference_ratio()
    assert s == pytest.approx(
        sum(d * acc.dense_layer_flops[n] for n, d in ctl.layer_densities().items())
        / acc.dense_flops
    )
    n, dg = acc.steps, ctl.dense_grad_steps
    assert n == 40 and acc.dense_grad_steps == dg
    mean_s = sum(acc.trace) / n  # time-average of f_S / f_D over the run
    if method == "SNFS":  # redistribution moves density between layers: use the time-average
        assert dg == n
        assert acc.train_ratio() == pytest.approx((2 * mean_s + 1) / 3)
    elif method == "RigL":
        assert dg == 5  # updates at ticks 5, 10, 15, 20, 25 < 30 = 0.75 * 40
        assert mean_s == pytest.approx(s)  # RigL keeps every layer's budget
        assert acc.train_ratio() == pytest.approx((3 * s * (n - dg) + dg * (2 * s + 1)) / (3 * n))
        r = report("lenet5", "digits", "RigL", 0.3, "ERK", interval=5, end_when=0.75)
        assert acc.train_ratio() == pytest.approx(r["train"], abs=0.01)
    else:
        assert dg == 0 and mean_s == pytest.approx(s)
        assert acc.train_ratio() == pytest.approx(s)
        r = report("lenet5", "digits", method, 0.3, init)
        assert r["test"] == pytest.approx(s) and r["train"] == pytest.approx(s)


def test_pruning_masks_from_checkpoint(tmp_path):
    ctl, acc = _train("Pruning", "random", steps=40, start_when=5, end_when=30, interval=5)
    assert acc.inference_ratio() < 0.5
    (tmp_path / "ckpts").mkdir()
    path = tmp_path / "ckpts" / "last.pt"
    model_sd = {n: p.detach().clone() for n, p in ctl.model.state_dict().items()}
    torch.save({"model": model_sd, "sparsity": ctl.state_dict()}, path)

    # the saved masks' cost is exact; the training cost is then an estimate
    dens = flops.densities_from_checkpoint(path, list(acc.dense_layer_flops))
    assert dens == pytest.approx(ctl.layer_densities())
    r = report("lenet5", "digits", "Pruning", 0.3, masks_from=path)
    assert r["test"] == pytest.approx(acc.inference_ratio()) and r["estimate"] is True
    assert report("lenet5", "digits", "Pruning", 0.3, masks_from=tmp_path)["test"] == r["test"]
    with pytest.raises(CheckpointError, match="lacks"):
        report("mlp", "digits", "Pruning", 0.3, masks_from=path)

    # full-width checkpoint, with and without the trainer's measured FLOPs state
    full = models.build("lenet5", "digits")
    masks = {
        n: torch.rand_like(p) < 0.25 for n, p in full.named_parameters() if n.endswith("weight")
    }
    torch.save({"sparsity": {"masks": masks}}, path)
    r = report("lenet5", "digits", "Pruning", 0.3, masks_from=path)
    expected = sum(masks[n].float().mean().item() * f for n, f in r["layers"].items()
                   for f in [f["dense_flops"]]) / r["dense_flops"]  # fmt: skip
    assert r["test"] == pytest.approx(expected) and r["estimate"] is True
    measured = FlopsAccountant(dense_layer_flops(full, (1, 8, 8)))
    for _ in range(10):
        measured.on_step(False)
    measured.on_masks_changed({n: m.float().mean().item() for n, m in masks.items()})
    for _ in range(10):
        measured.on_step(False)
    torch.save({"model": {n: p * masks[n] if n in masks else p for n, p in full.state_dict().items()},
                "flops": measured.state_dict()}, path)  # fmt: skip
    r = report("lenet5", "digits", "Pruning", 0.3, masks_from=path)
    assert r["estimate"] is False
    assert r["train"] == pytest.approx(measured.train_ratio())
    assert r["test"] == pytest.approx(expected)

    with pytest.raises(CheckpointError, match="no checkpoint"):
        report("lenet5", "digits", "Pruning", 0.3, masks_from=tmp_path / "missing.pt")


# --------------------------------------------------------------------------- CLI
def test_cli_table_and_json(capsys):
    from sparsetrain.cli.flops import main

    args = ["model=wrn-22-2", "dataset=CIFAR10", "masking=RigL", "masking.density=0.2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "block3.layer.2.conv2" in out and "total" in out and "0.35" in out
    assert (
        main([*args, "masking.sparse_init=random", "optimizer.training_multiplier=2", "--json"])
        == 0
    )
    r = json.loads(capsys.readouterr().out)
    assert r["train"] == pytest.approx(0.41, abs=0.01) and r["test"] == pytest.approx(0.2, abs=0.01)


def test_cli_reference_table(capsys):
    from sparsetrain.cli.flops import main

    assert main(["--reference"]) == 0
    out = capsys.readouterr().out
    for label in ("Small Dense", "RigL (ERK)", "RigL_2x (ERK)", "0.70x", "0.35x"):
        assert label in out


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["masking=Nope"], "masking/Nope"),
        (["model=vgg"], "unknown model 'vgg'"),
        (["masking.densityy=0.3"], "densityy"),
        (["masking.density=2.0"], "density"),
    ],
)
def test_cli_errors_are_one_line(args, pattern, capsys):
    from sparsetrain.cli.flops import main

    assert main(args) == 2
    err = capsys.readouterr().err
    assert pattern in err and err.count("\n") == 1 and "Traceback" not in err
