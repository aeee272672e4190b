"""Model zoo: shapes, exact parameter counts, reference parameter names, width multiplier."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sparsetrain import models
from sparsetrain.errors import ConfigError


def spec(c: int, size: int, classes: int) -> SimpleNamespace:
    return SimpleNamespace(in_channels=c, image_size=(size, size), num_classes=classes)


MNIST = spec(1, 28, 10)
DIGITS = spec(1, 8, 10)
CIFAR10 = spec(3, 32, 10)
CIFAR100 = spec(3, 32, 100)
IMAGENET = spec(3, 224, 1000)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def masked_names(model: nn.Module) -> list[str]:
    return [
        f"{name}.weight"
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]


def test_names_are_the_contract():
    assert models.names() == [
        "lenet-300-100",
        "lenet5",
        "mlp",
        "wrn-22-2",
        "resnet50",
        "resnet50-imagenet",
    ]


# (name, data set, width): small widths keep the big networks' forward passes fast
FORWARD_CASES = [
    ("lenet-300-100", MNIST, 1.0),
    ("lenet-300-100", DIGITS, 1.0),
    ("lenet-300-100", CIFAR10, 1.0),
    ("lenet5", MNIST, 1.0),
    ("lenet5", DIGITS, 1.0),
    ("lenet5", CIFAR10, 1.0),
    ("mlp", MNIST, 1.0),
    ("mlp", DIGITS, 1.0),
    ("wrn-22-2", CIFAR10, 1.0),
    ("wrn-22-2", MNIST, 0.5),
    ("wrn-22-2", DIGITS, 0.5),
    ("resnet50", CIFAR100, 0.25),
    ("resnet50", DIGITS, 0.125),
    ("resnet50-imagenet", spec(3, 64, 1000), 0.125),
    ("resnet50-imagenet", CIFAR10, 0.125),
]


@pytest.mark.parametrize(("name", "info", "width"), FORWARD_CASES)
def test_forward_shape(name, info, width):
    torch.manual_seed(0)
    model = models.build(name, info, width=width)
    x = torch.randn(2, info.in_channels, *info.image_size)
    model.train()
    out = model(x)
    assert out.shape == (2, info.num_classes)
    assert torch.isfinite(out).all()
    out.sum().backward()  # trainable end to end


@pytest.mark.parametrize(
    ("name", "info"),
    [("resnet50-imagenet", IMAGENET), ("resnet50", CIFAR100), ("wrn-22-2", CIFAR10)],
)
def test_full_width_shapes_on_meta(name, info):
    """Full-size networks at their real input sizes, shape-checked on the meta device."""
    with torch.device("meta"):
        model = models.build(name, info)
        out = model.eval()(torch.empty(1, info.in_channels, *info.image_size))
    assert out.shape == (1, info.num_classes)


@pytest.mark.parametrize(
    ("name", "info", "expected"),
    [
        ("lenet-300-100", MNIST, 266_610),  # 784*300+300 + 300*100+100 + 100*10+10
        ("lenet5", MNIST, 431_080),  # LeNet-5-Caffe (Caffe's MNIST model)
        ("wrn-22-2", CIFAR10, 1_079_642),  # computed below by hand
        ("resnet50", CIFAR100, 23_705_252),
        ("resnet50-imagenet", IMAGENET, 25_557_032),  # torchvision's ResNet-50
        ("mlp", MNIST, 784 * 1000 + 1000 + 1000 * 1000 + 1000 + 1000 * 10 + 10),
    ],
)
def test_parameter_counts(name, info, expected):
    with torch.device("meta"):
        assert n_params(models.build(name, info)) == expected


def test_wrn_22_2_parameter_count_by_hand():
    def conv(cin, cout, k):
        return cin * cout * k * k

    def bn(c):
        return 2 * c

    total = conv(3, 16, 3)
    for cin, cout in ((16, 32), (32, 64), (64, 128)):
        for i in range(3):
            c_in = cin if i == 0 else cout
            total += bn(c_in) + conv(c_in, cout, 3) + bn(cout) + conv(cout, cout, 3)
        total += conv(cin, cout, 1)  # convShortcut of layer 0
    total += bn(128) + 128 * 10 + 10
    assert total == 1_079_642


def test_wrn_22_2_reference_names():
    model = models.build("wrn-22-2", CIFAR10)
    expected = ["conv1.weight"]
    for b in (1, 2, 3):
        for i in range(3):
            expected += [f"block{b}.layer.{i}.conv1.weight", f"block{b}.layer.{i}.conv2.weight"]
            if i == 0:
                expected.append(f"block{b}.layer.0.convShortcut.weight")
    expected.append("fc.weight")
    assert sorted(masked_names(model)) == sorted(expected)
    assert len(expected) == 23
    keys = set(model.state_dict())
    for b in (1, 2, 3):
        for i in range(3):
            for part in ("bn1", "bn2"):
                assert f"block{b}.layer.{i}.{part}.running_mean" in keys
        assert f"block{b}.layer.1.convShortcut.weight" not in keys
    assert {"bn1.weight", "bn1.bias", "fc.bias"} <= keys
    assert not any(k.endswith("bias") and "conv" in k.lower() for k in keys)  # no conv biases
    shapes = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    assert shapes["conv1.weight"] == (16, 3, 3, 3)
    assert shapes["block1.layer.0.convShortcut.weight"] == (32, 16, 1, 1)
    assert shapes["block2.layer.0.conv1.weight"] == (64, 32, 3, 3)
    assert shapes["block3.layer.2.conv2.weight"] == (128, 128, 3, 3)
    assert shapes["fc.weight"] == (10, 128)


def test_wrn_dropout_and_log_softmax():
    torch.manual_seed(0)
    model = models.build("wrn-22-2", CIFAR10, width=0.25)
    assert all(b.drop_rate == 0.3 for b in model.modules() if hasattr(b, "drop_rate"))
    x = torch.randn(3, 3, 32, 32)
    model.eval()
    out = model(x)
    assert torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)  # log-probabilities
    assert torch.equal(model(x), out)  # eval: deterministic
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert not torch.equal(a, model(x))  # train: dropout active


def test_resnet50_reference_names():
    model = models.build("resnet50", CIFAR100, width=0.125)
    names = masked_names(model)
    expected = ["conv1.0.weight"]
    for stage, blocks in zip((2, 3, 4, 5), (3, 4, 6, 3)):
        for i in range(blocks):
            expected += [f"conv{stage}_x.{i}.residual_function.{j}.weight" for j in (0, 3, 6)]
            if i == 0:
                expected.append(f"conv{stage}_x.0.shortcut.0.weight")
    expected.append("fc.weight")
    assert names == expected  # module order too
    keys = set(model.state_dict())
    assert "conv1.1.running_var" in keys
    assert "conv2_x.0.residual_function.7.weight" in keys  # last BN of a bottleneck
    assert "conv3_x.0.shortcut.1.running_mean" in keys
    assert "conv2_x.1.shortcut.0.weight" not in keys


def test_resnet50_full_width_shapes():
    with torch.device("meta"):
        model = models.build("resnet50", CIFAR100)
    sd = model.state_dict()
    assert tuple(sd["conv1.0.weight"].shape) == (64, 3, 3, 3)  # 3x3 stem, stride 1
    assert tuple(sd["conv3_x.0.residual_function.3.weight"].shape) == (128, 128, 3, 3)
    assert model.conv3_x[0].residual_function[3].stride == (2, 2)  # stride on the 3x3 conv
    assert model.conv2_x[0].residual_function[3].stride == (1, 1)
    assert tuple(sd["fc.weight"].shape) == (100, 2048)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    with torch.device("meta"):
        imagenet = models.build("resnet50-imagenet", IMAGENET)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    assert tuple(imagenet.state_dict()["layer4.0.downsample.0.weight"].shape) == (2048, 1024, 1, 1)


@pytest.mark.parametrize(
    ("name", "info"),
    [
        ("lenet-300-100", MNIST),
        ("lenet5", MNIST),
        ("mlp", MNIST),
        ("wrn-22-2", CIFAR10),
        ("resnet50", CIFAR100),
        ("resnet50-imagenet", IMAGENET),
    ],
)
@pytest.mark.parametrize("width", [0.5, 0.25])
def test_width_scales_parameters_quadratically(name, info, width):
    with torch.device("meta"):
        full = models.build(name, info)
        small = models.build(name, info, width=width)
        out = small(torch.empty(1, info.in_channels, *info.image_size))
    ratio = n_params(small) / n_params(full)
    if name in ("lenet-300-100", "mlp"):
        # the input layer (fixed 784 inputs) holds most weights and scales linearly
        assert width**2 < ratio < width * 1.01, ratio
    else:
        # only the stem and the classifier scale linearly: close to width**2
        assert width**2 * 0.95 <= ratio <= width**2 * 1.25, ratio
    assert out.shape[1] == info.num_classes
    first = next(m for m in small.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    assert (first.in_channels if isinstance(first, nn.Conv2d) else first.in_features) == (
        info.in_channels
        if isinstance(first, nn.Conv2d)
        else info.in_channels * info.image_size[0] * info.image_size[1]
    )


def test_tiny_width_keeps_at_least_one_channel():
    model = models.build("wrn-22-2", CIFAR10, width=0.001)
    assert model.conv1.out_channels == 1
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert models.scaled(300, 0.5) == 150 and models.scaled(7, 0.5) == 4


def test_mlp_hidden_widths_option():
    model = models.build("mlp", MNIST, hidden=(300, 100))
    assert [tuple(m.weight.shape) for m in model.layers] == [(300, 784), (100, 300), (10, 100)]
    assert n_params(model) == 266_610  # = LeNet-300-100
    assert models.build("mlp", DIGITS, hidden=()).layers[0].weight.shape == (10, 64)


def test_lenet5_digits_uses_same_padding():
    model = models.build("lenet5", DIGITS)
    assert model.conv1.padding == (2, 2)
    assert model.fc3.in_features == 50 * 2 * 2
    mnist = models.build("lenet5", MNIST)
    assert mnist.conv1.padding == (0, 0) and mnist.fc3.in_features == 800


def test_unknown_model_names_choices():
    with pytest.raises(ConfigError, match=r"unknown model 'vgg'.*wrn-22-2"):
        models.build("vgg", CIFAR10)


@pytest.mark.parametrize("width", [0, -1.0, "wide"])
def test_bad_width(width):
    with pytest.raises(ConfigError, match="width"):
        models.build("lenet5", MNIST, width=width)


def test_bad_option_and_bad_dataset():
    with pytest.raises(ConfigError, match="lenet5"):
        models.build("lenet5", MNIST, hidden=(3,))
    with pytest.raises(ConfigError, match="in_channels"):
        models.build("lenet5", object())
    with pytest.raises(ConfigError, match="mlp hidden"):
        models.build("mlp", MNIST, hidden=(0,))


def test_build_by_dataset_name():
    model = models.build("lenet5", "FashionMNIST")
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 10)
    assert models.build("resnet50", "CIFAR100", width=0.125).fc.out_features == 100
    with pytest.raises(ConfigError, match="dataset"):
        models.build("lenet5", "NoSuchData")


def test_wrn_init_matches_reference_scheme():
    torch.manual_seed(0)
    model = models.build("wrn-22-2", CIFAR10)
    w = model.get_parameter("block3.layer.1.conv1.weight")
    expected_std = (2.0 / (3 * 3 * 128)) ** 0.5
    assert abs(w.std().item() - expected_std) / expected_std < 0.05
    assert torch.all(model.fc.bias == 0)
    assert torch.all(model.block1.layer[0].bn1.weight == 1)
