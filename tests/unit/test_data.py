"""sparsetrain.data: parsers on generated files, checksums, search/download errors, splits, loader.

No network: an autouse fixture replaces the package's only URL opener and isolates the
environment (no $SPARSETRAIN_DATA, a private cache directory).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparsetrain.data import (
    DATASETS,
    Loader,
    _files,
    augment_batch,
    dataset_info,
    idx,
    load_splits,
    split_indices,
)
from sparsetrain.data.folder import decode_image
from sparsetrain.data.idx import parse_idx, read_idx
from sparsetrain.errors import ConfigError, DataError

FMNIST_SYSTEM = Path("/usr/share/datasets/fashion-mnist")


class NetworkDisabled(OSError):
    pass


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No network, no user data directories: every test sees only what it creates."""
    calls: list[str] = []

    def no_network(url, timeout):
        calls.append(url)
        raise NetworkDisabled(f"network disabled in tests ({url})")

    monkeypatch.setattr(_files, "_open_url", no_network)
    monkeypatch.delenv(_files.ENV_DATA, raising=False)
    monkeypatch.delenv(_files.ENV_OFFLINE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return calls


@pytest.fixture
def no_system_fmnist(tmp_path, monkeypatch):
    monkeypatch.setitem(idx.SYSTEM_DIRS, "FashionMNIST", (tmp_path / "no-system-dir",))


# ---------------------------------------------------------------- generators of real formats


def idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    code = codes[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_mnist_dir(
    directory: Path, n_train=20, n_test=10, gz=True, seed=0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, array in arrays.items():
        write_idx(directory / stem, array, gz)
    return arrays


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 `str` (BINSTRING), as the official CIFAR files have them."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    # numpy 1.x (which wrote the real files) names its array reconstructor numpy.core.multiarray
    return buffer.getvalue().replace(
        b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n"
    )


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def cifar10_members(per_batch=4, n_test=6, seed=0):
    rng = np.random.default_rng(seed)
    members, images, labels = {}, [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        lab = [int(v) for v in rng.integers(0, 10, per_batch)]
        images.append(data)
        labels += lab
        members[f"data_batch_{i}"] = {
            "batch_label": f"training batch {i} of 5",
            "labels": lab,
            "data": data,
            "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)],
        }
    test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test_labels = [int(v) for v in rng.integers(0, 10, n_test)]
    members["test_batch"] = {
        "batch_label": "testing batch 1 of 1",
        "labels": test_labels,
        "data": test,
        "filenames": [f"test_{j}.png" for j in range(n_test)],
    }
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    members["batches.meta"] = {
        "num_cases_per_batch": per_batch,
        "label_names": names,
        "num_vis": 3072,
    }
    return members, np.concatenate(images), np.array(labels), test, np.array(test_labels)


def write_tarball(path: Path, folder: str, members: dict, raw: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(folder)
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, obj in members.items():
            add_member(tar, f"{folder}/{name}", py2_pickle(obj))
        for name, data in (raw or {}).items():
            add_member(tar, f"{folder}/{name}", data)
        add_member(tar, f"{folder}/readme.html", b"<html>generated</html>")
    return path


# ---------------------------------------------------------------- IDX


def test_parse_idx_raw_and_gz(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    ints = rng.integers(-(2**31), 2**31 - 1, (3, 4), dtype=np.int32)
    for gz in (False, True):
        assert np.array_equal(read_idx(write_idx(tmp_path / f"img{gz}", images, gz)), images)
        got = read_idx(write_idx(tmp_path / f"int{gz}", ints, gz))
        assert got.dtype == np.int32 and np.array_equal(got, ints)


def test_idx_truncated_raw_names_file(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8), False)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: truncated"):
        read_idx(path)


def test_idx_truncated_gz_names_file(tmp_path):
    path = write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(200, dtype=np.uint8), True)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: truncated or corrupt gzip"):
        read_idx(path)


def test_idx_bad_magic_and_trailing_bytes():
    with pytest.raises(DataError, match="not an IDX file"):
        parse_idx(b"PK\x03\x04 zip, not idx", "x.zip")
    with pytest.raises(DataError, match="trailing bytes"):
        parse_idx(idx_bytes(np.zeros(3, np.uint8)) + b"\0", "extra")


def test_mnist_generated_files_load(tmp_path):
    arrays = make_mnist_dir(tmp_path / "mnist", gz=True)
    splits = load_splits("MNIST", tmp_path / "mnist", validation_split=0.25, verify=False)
    (xtr, ytr), (xva, _), (xte, yte) = splits.train, splits.val, splits.test
    assert (
        xtr.shape == (15, 1, 28, 28)
        and xva.shape == (5, 1, 28, 28)
        and xte.shape == (10, 1, 28, 28)
    )
    assert xtr.dtype == torch.uint8 and ytr.dtype == torch.int64
    train_idx, val_idx = split_indices(20, 0.25, 0)
    images = torch.from_numpy(arrays["train-images-idx3-ubyte"]).unsqueeze(1)
    assert torch.equal(xtr, images[train_idx]) and torch.equal(xva, images[val_idx])
    assert torch.equal(yte, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    assert splits.info.name == "MNIST"


def test_checksum_mismatch_names_file(tmp_path, no_system_fmnist):
    make_mnist_dir(tmp_path / "fm", gz=False)
    with pytest.raises(DataError, match=r"fm/t(rain|10k)-.*-idx\d-ubyte: checksum mismatch"):
        load_splits("FashionMNIST", tmp_path / "fm")


def test_inconsistent_label_count_names_file(tmp_path):
    make_mnist_dir(tmp_path / "m", gz=False)
    write_idx(tmp_path / "m" / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8), False)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: 3 labels for 10 images"):
        load_splits("MNIST", tmp_path / "m", verify=False)


def test_missing_files_say_where_and_how(tmp_path, monkeypatch, isolated, no_system_fmnist):
    env_dir = tmp_path / "envdata"
    monkeypatch.setenv(_files.ENV_DATA, str(env_dir))
    root = tmp_path / "datasets" / "FashionMNIST"
    with pytest.raises(DataError) as excinfo:
        load_splits("FashionMNIST", root)
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in (
        str(root),
        str(env_dir),
        str(tmp_path / "no-system-dir"),
        "apt-get install dataset-fashion-mnist",
    ):
        assert fragment in message
    assert "fashion-mnist.s3-website.eu-central-1.amazonaws.com" in message
    assert "download failed" in message
    assert isolated and all("fashion" in url for url in isolated)  # the download was tried
    assert not any(p.is_file() for p in root.rglob("*"))  # no partial files left behind


def test_offline_disables_download(tmp_path, monkeypatch, isolated):
    monkeypatch.setenv(_files.ENV_OFFLINE, "1")
    with pytest.raises(DataError, match=r"MNIST: .* downloads are disabled; download .*ossci"):
        load_splits("MNIST", tmp_path / "none")
    assert isolated == []


def test_download_is_checksummed(tmp_path, monkeypatch):
    served = {}
    rng = np.random.default_rng(3)
    for stem, shape in [
        ("train-images-idx3-ubyte", (8, 28, 28)),
        ("train-labels-idx1-ubyte", (8,)),
        ("t10k-images-idx3-ubyte", (4, 28, 28)),
        ("t10k-labels-idx1-ubyte", (4,)),
    ]:
        high = 10 if "labels" in stem else 256
        served[f"{stem}.gz"] = gzip.compress(
            idx_bytes(rng.integers(0, high, shape, dtype=np.uint8))
        )
    md5s = {name: hashlib.md5(data).hexdigest() for name, data in served.items()}
    monkeypatch.setitem(idx.GZ_MD5, "MNIST", md5s)
    monkeypatch.setattr(
        _files, "_open_url", lambda url, timeout: io.BytesIO(served[url.rsplit("/", 1)[1]])
    )
    root = tmp_path / "dl"
    splits = load_splits("MNIST", root, validation_split=0, verify=False)
    assert splits.train[0].shape == (8, 1, 28, 28) and splits.val is None
    assert sorted(p.name for p in root.iterdir()) == sorted(served)

    md5s["t10k-images-idx3-ubyte.gz"] = "0" * 32  # a mirror serving something else
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz has md5 .* expected 0{32}"):
        load_splits("MNIST", tmp_path / "dl2", verify=False)
    assert not (tmp_path / "dl2" / "t10k-images-idx3-ubyte.gz").exists()
    assert not list((tmp_path / "dl2").glob(".*part"))


def test_search_order_root_env_and_raw_layout(tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    monkeypatch.setenv(_files.ENV_DATA, str(env_dir))
    env_arrays = make_mnist_dir(env_dir / "MNIST" / "raw", seed=1)  # torchvision's layout
    got = load_splits("MNIST", tmp_path / "missing-root", validation_split=0, verify=False)
    assert torch.equal(got.test[1], torch.from_numpy(env_arrays["t10k-labels-idx1-ubyte"]).long())
    root_arrays = make_mnist_dir(tmp_path / "root", seed=2)
    got = load_splits("MNIST", tmp_path / "root", validation_split=0, verify=False)
    assert torch.equal(got.test[1], torch.from_numpy(root_arrays["t10k-labels-idx1-ubyte"]).long())


# ---------------------------------------------------------------- CIFAR


def test_cifar10_tarball_in_the_real_format(tmp_path):
    members, images, labels, test, test_labels = cifar10_members()
    write_tarball(tmp_path / "c10" / "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
    splits = load_splits("CIFAR10", tmp_path / "c10", validation_split=0, verify=False)
    x, y = splits.train
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.equal(x, torch.from_numpy(images).view(20, 3, 32, 32))
    assert torch.equal(y, torch.from_numpy(labels).long())
    assert torch.equal(splits.test[0], torch.from_numpy(test).view(6, 3, 32, 32))
    assert torch.equal(splits.test[1], torch.from_numpy(test_labels).long())
    # red plane first: the first 1024 values of a row are the R channel in row-major order
    assert torch.equal(x[0, 0].flatten(), torch.from_numpy(images[0, :1024]))
    assert splits.classes[0] == "airplane" and len(splits.classes) == 10


def test_cifar_tarball_md5_is_checked(tmp_path):
    members = cifar10_members()[0]
    path = write_tarball(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz: checksum mismatch .*c58f3010"):
        load_splits("CIFAR10", tmp_path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz: truncated or corrupt archive"):
        load_splits("CIFAR10", tmp_path, verify=False)


def test_cifar100_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (7, 3072), dtype=np.uint8)
    fine = [int(v) for v in rng.integers(0, 100, 7)]
    members = {
        "train": {
            "filenames": ["a"] * 7,
            "batch_label": "training batch 1 of 1",
            "fine_labels": fine,
            "coarse_labels": [0] * 7,
            "data": train,
        },
        "test": {
            "filenames": ["b"] * 3,
            "batch_label": "testing batch 1 of 1",
            "fine_labels": [99, 0, 5],
            "coarse_labels": [1] * 3,
            "data": train[:3],
        },
        "meta": {
            "fine_label_names": [f"c{i}" for i in range(100)],
            "coarse_label_names": ["x"] * 20,
        },
    }
    write_tarball(tmp_path / "cifar-100-python.tar.gz", "cifar-100-python", members)
    splits = load_splits("CIFAR100", tmp_path, validation_split=0, verify=False)
    assert splits.train[0].shape == (7, 3, 32, 32)
    assert splits.train[1].tolist() == fine and splits.test[1].tolist() == [99, 0, 5]
    assert splits.info.num_classes == 100 and splits.classes[99] == "c99"


def test_cifar_extracted_folder(tmp_path):
    members = cifar10_members(per_batch=2, n_test=3)[0]
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, obj in members.items():
        (folder / name).write_bytes(py2_pickle(obj))
    splits = load_splits("CIFAR10", tmp_path, validation_split=0.2, verify=False)
    assert splits.train[0].shape == (8, 3, 32, 32) and splits.val[0].shape == (2, 3, 32, 32)
    with pytest.raises(DataError, match=r"data_batch_1: checksum mismatch"):
        load_splits("CIFAR10", tmp_path)


class Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_cifar_refuses_code_in_pickles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    members = cifar10_members()[0]
    members["data_batch_3"] = {"data": Exploit()}
    write_tarball(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
    with pytest.raises(DataError, match=r"data_batch_3: not a CIFAR python pickle .*refusing"):
        load_splits("CIFAR10", tmp_path, verify=False)
    assert not (tmp_path / "pwned").exists()


def test_cifar_missing_says_where_and_url(tmp_path):
    with pytest.raises(
        DataError,
        match=r"CIFAR100: neither cifar-100-python\.tar\.gz .* found in .*empty.*cs\.toronto\.edu",
    ):
        load_splits("CIFAR100", tmp_path / "empty")


# ---------------------------------------------------------------- image folders


def save_image(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_tree(tmp_path):
    rng = np.random.default_rng(0)
    exact = rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)
    root = tmp_path / "mini"
    for cls in ("n01", "n02", "n03"):
        save_image(root / "train_val" / cls / "a.png", exact)
        save_image(
            root / "train_val" / cls / "b.png", rng.integers(0, 256, (100, 130, 3), dtype=np.uint8)
        )
    save_image(root / "test" / "n03" / "t.png", exact)
    save_image(
        root / "test" / "n01" / "g.png", rng.integers(0, 256, (90, 90), dtype=np.uint8)
    )  # grey
    (root / "test" / "n01" / "notes.txt").write_text("ignored")
    splits = load_splits("Mini-Imagenet", root, validation_split=0, verify=False)
    x, y = splits.train
    assert x.shape == (6, 3, 84, 84) and x.dtype == torch.uint8
    assert y.tolist() == [0, 0, 1, 1, 2, 2] and splits.classes == ("n01", "n02", "n03")
    assert torch.equal(x[0], torch.from_numpy(exact).permute(2, 0, 1))  # 84x84 is kept exactly
    assert splits.test[1].tolist() == [0, 2] and splits.test[0].shape == (2, 3, 84, 84)
    assert splits.info.num_classes == 3
    with pytest.raises(DataError, match=r"found 3 class folders, Mini-Imagenet has 100"):
        load_splits("Mini-Imagenet", root)
    (root / "train_val" / "n02" / "c.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"n02/c\.jpg: cannot decode image"):
        load_splits("Mini-Imagenet", root, verify=False)


def test_decode_image_resizes_shorter_side_and_center_crops(tmp_path):
    wide = np.arange(84 * 120 * 3, dtype=np.uint32).reshape(84, 120, 3).astype(np.uint8)
    save_image(tmp_path / "wide.png", wide)
    got = decode_image(tmp_path / "wide.png", resize=84, crop=84)
    assert torch.equal(got, torch.from_numpy(wide[:, 18:102]).permute(2, 0, 1))
    flat = np.full((200, 300, 3), 77, dtype=np.uint8)
    save_image(tmp_path / "flat.png", flat)
    got = decode_image(tmp_path / "flat.png", resize=256, crop=224)
    assert got.shape == (3, 224, 224) and bool((got == 77).all())


def test_image_folder_missing(tmp_path):
    with pytest.raises(DataError, match=r"ImageNet: no image folders \(train/ and val/ or test/\)"):
        load_splits("ImageNet", tmp_path)


# ---------------------------------------------------------------- registry, digits, splits


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_info(name):
    info = dataset_info(name)
    assert info.name == name and len(info.mean) == len(info.std) == info.in_channels
    assert info.input_shape == (info.in_channels, *info.image_size)


def test_dataset_info_values_and_errors():
    assert (
        dataset_info("ImageNet").image_size == (224, 224)
        and dataset_info("ImageNet").num_classes == 1000
    )
    assert dataset_info("Mini-ImageNet").name == "Mini-Imagenet"
    assert (
        dataset_info("CIFAR10").augment == "crop_flip"
        and dataset_info("FashionMNIST").augment is None
    )
    with pytest.raises(
        ConfigError, match=r"unknown dataset 'SVHN'; valid choices: .*CIFAR10.*FashionMNIST"
    ):
        dataset_info("SVHN")
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_splits("SVHN")


def test_digits_loads_with_fixed_test_split():
    a = load_splits("digits", validation_split=0.1, split_seed=0)
    assert a.train[0].shape == (1294, 1, 8, 8) and a.val[0].shape == (144, 1, 8, 8)
    assert a.test[0].shape == (359, 1, 8, 8) and a.info.num_train == 1438
    assert int(a.train[0].max()) == 255 and set(a.train[1].tolist()) == set(range(10))
    b = load_splits("digits", validation_split=0.1, split_seed=1)
    assert torch.equal(a.test[0], b.test[0])  # the test set never depends on split_seed
    assert not torch.equal(a.val[1], b.val[1])


def test_split_determinism():
    train, val = split_indices(100, 0.1, seed=0)
    train2, val2 = split_indices(100, 0.1, seed=0)
    assert torch.equal(train, train2) and torch.equal(val, val2)
    assert len(val) == 10 and len(train) == 90
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))
    assert not torch.equal(val, split_indices(100, 0.1, seed=1)[1])
    assert split_indices(100, 0.0, seed=0)[1] is None
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="validation_split"):
            split_indices(100, bad, seed=0)


# ---------------------------------------------------------------- loader

INFO3 = dataset_info("CIFAR10")


def toy(n=103, c=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g), torch.arange(n)


def collect(loader, epoch, start_batch=0):
    return list(loader.epoch(epoch, start_batch))


def same(a, b):
    return len(a) == len(b) and all(
        torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b)
    )


def test_loader_normalises_and_keeps_order():
    x, y = toy(n=25)
    loader = Loader(x, y, 10, shuffle=False, info=INFO3, seed=0)
    batches = collect(loader, 0)
    assert len(loader) == 3 and [len(b[1]) for b in batches] == [10, 10, 5]
    xs = torch.cat([b[0] for b in batches])
    mean = torch.tensor(INFO3.mean).view(1, 3, 1, 1)
    std = torch.tensor(INFO3.std).view(1, 3, 1, 1)
    assert xs.dtype == torch.float32 and torch.allclose(
        xs, (x.float() / 255 - mean) / std, atol=1e-5
    )
    assert torch.equal(torch.cat([b[1] for b in batches]), y)
    floats = collect(Loader(x.float() / 255, y, 10, shuffle=False, info=INFO3, seed=0), 0)
    assert torch.allclose(torch.cat([b[0] for b in floats]), xs, atol=1e-5)


def test_loader_is_deterministic_per_seed_and_epoch():
    x, y = toy()
    make = lambda seed: Loader(x, y, 16, shuffle=True, augment="crop_flip", info=INFO3, seed=seed)  # noqa: E731
    assert same(collect(make(0), 3), collect(make(0), 3))
    assert not torch.equal(collect(make(0), 3)[0][1], collect(make(0), 4)[0][1])
    assert not torch.equal(collect(make(0), 3)[0][1], collect(make(1), 3)[0][1])
    order = make(0).global_order(3)
    assert sorted(order.tolist()) == list(range(103))
    assert torch.equal(torch.cat([b[1] for b in collect(make(0), 3)]), order)


@pytest.mark.parametrize("augment", [None, "crop_flip"])
def test_loader_resume_mid_epoch(augment):
    x, y = toy()
    loader = Loader(x, y, 16, shuffle=True, augment=augment, info=INFO3, seed=7)
    full = collect(loader, 2)
    for k in (0, 1, 4, len(loader)):
        resumed = Loader(x, y, 16, shuffle=True, augment=augment, info=INFO3, seed=7)
        assert same(collect(resumed, 2, start_batch=k), full[k:])
    with pytest.raises(ConfigError, match="start_batch"):
        loader.epoch(2, start_batch=len(loader) + 1)


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharded_ranks_reproduce_the_global_batch(world_size):
    x, y = toy()
    kwargs = dict(shuffle=True, augment="crop_flip", info=INFO3, seed=5)
    full = collect(Loader(x, y, 16, **kwargs), 1)
    ranks = [
        collect(Loader(x, y, 16, rank=r, world_size=world_size, **kwargs), 1)
        for r in range(world_size)
    ]
    assert all(len(r) == len(full) for r in ranks)
    for b, (gx, gy) in enumerate(full):
        assert torch.equal(torch.cat([r[b][0] for r in ranks]), gx)
        assert torch.equal(torch.cat([r[b][1] for r in ranks]), gy)
    # each rank's slice is contiguous in the global order
    assert torch.equal(ranks[0][0][1], full[0][1][: 16 // world_size])


def test_loader_drop_last_and_bad_arguments():
    x, y = toy(n=50)
    loader = Loader(x, y, 16, shuffle=True, drop_last=True, info=INFO3, seed=0)
    assert len(loader) == 3 and all(len(b[1]) == 16 for b in collect(loader, 0))
    with pytest.raises(ConfigError, match=r"batch_size 51 is larger than the 50 examples"):
        Loader(x, y, 51, shuffle=True, info=INFO3, seed=0)
    with pytest.raises(
        ConfigError, match=r"unknown augmentation 'mixup'; valid choices: .*crop_flip"
    ):
        Loader(x, y, 8, shuffle=True, augment="mixup", info=INFO3, seed=0)
    with pytest.raises(ConfigError, match="rank"):
        Loader(x, y, 8, shuffle=True, info=INFO3, seed=0, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="channels"):
        Loader(x, y, 8, shuffle=True, info=dataset_info("MNIST"), seed=0)


def test_augment_batch_matches_pad_crop_flip():
    x, _ = toy(n=12, h=10, w=7)
    g = torch.Generator().manual_seed(0)
    shift = torch.randint(0, 9, (12, 2), generator=g)
    flip = torch.randint(0, 2, (12,), generator=g).bool()
    got = augment_batch(x, shift, flip, 4)
    padded = F.pad(x.float(), (4, 4, 4, 4), mode="reflect")
    for k in range(12):
        dy, dx = shift[k].tolist()
        want = padded[k, :, dy : dy + 10, dx : dx + 7]
        if flip[k]:
            want = want.flip(-1)
        assert torch.equal(got[k].float(), want)
    assert got.dtype == torch.uint8


def test_loader_augmentation_changes_train_batches_only_as_drawn():
    x, y = toy(n=32)
    plain = collect(Loader(x, y, 32, shuffle=False, info=INFO3, seed=0), 0)[0][0]
    aug = collect(Loader(x, y, 32, shuffle=False, augment="crop_flip", info=INFO3, seed=0), 0)[0][0]
    assert aug.shape == plain.shape and not torch.equal(aug, plain)
    # identity shift without flip leaves an example untouched
    same_shift = augment_batch(x, torch.full((32, 2), 4), None, 4)
    assert torch.equal(same_shift, x)


# ---------------------------------------------------------------- the real Fashion-MNIST files

REAL = [FMNIST_SYSTEM / f"{stem}.gz" for stem in idx.FILES.values()]


@pytest.mark.skipif(
    not all(p.is_file() for p in REAL), reason="dataset-fashion-mnist not installed"
)
def test_real_fashion_mnist_debian_files():
    splits = load_splits("FashionMNIST", validation_split=0.1, split_seed=0)  # verify=True: md5s
    assert splits.train[0].shape == (54_000, 1, 28, 28) and splits.val[0].shape == (
        6_000,
        1,
        28,
        28,
    )
    assert splits.test[0].shape == (10_000, 1, 28, 28) and splits.train[0].dtype == torch.uint8
    counts = torch.bincount(torch.cat([splits.train[1], splits.val[1]]), minlength=10)
    assert counts.tolist() == [6000] * 10
