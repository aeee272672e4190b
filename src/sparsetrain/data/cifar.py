"""CIFAR-10 / CIFAR-100 from the official python-pickle releases.

Reads `cifar-10-python.tar.gz` / `cifar-100-python.tar.gz` directly (nothing is extracted to
disk) or an already extracted `cifar-10-batches-py/` / `cifar-100-python/` folder (what
torchvision leaves behind). Only the expected member names are read, and they are unpickled
with an allow-list that admits nothing but numpy arrays (`encoding="bytes"`, as the files
were written by Python 2), so a crafted archive cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsetrain.data import _files
from sparsetrain.data.info import CIFAR10, CIFAR100, DatasetInfo
from sparsetrain.data.types import RawData
from sparsetrain.errors import DataError


@dataclass(frozen=True)
class CifarRelease:
    info: DatasetInfo
    archive: str
    url: str
    md5: str  # of the .tar.gz
    folder: str  # top-level folder inside the archive
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: bytes
    names_key: bytes
    member_md5: dict[str, str]  # of each extracted member (checked for extracted folders)


RELEASES: dict[str, CifarRelease] = {
    "CIFAR10": CifarRelease(
        info=CIFAR10,
        archive="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        meta="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
        member_md5={
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        },
    ),
    "CIFAR100": CifarRelease(
        info=CIFAR100,
        archive="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        meta="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
        member_md5={
            "train": "16019d7e3df5f24257cddd939b257f8d",
            "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "meta": "7973b15100ade9c7d40fb424638fde48",
        },
    ),
}


def _reconstruct() -> Any:
    core = getattr(np, "_core", None) or np.core
    return core.multiarray._reconstruct


class _SafeUnpickler(pickle.Unpickler):
    """Admits only what pickled numpy arrays need; everything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        if module == "_codecs" and name == "encode":  # bytes pickled by Python 3, protocol < 3
            import codecs

            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def safe_unpickle(data: bytes, source: str) -> dict:
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # any unpickling failure is a corrupt file
        raise DataError(f"{source}: not a CIFAR python pickle ({e})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{source}: not a CIFAR python pickle (a {type(obj).__name__})")
    return obj


def _members(rel: CifarRelease) -> tuple[str, ...]:
    return (*rel.train, *rel.test, rel.meta)


def _read_archive(path: Path, rel: CifarRelease) -> dict[str, bytes]:
    wanted = {f"{rel.folder}/{m}": m for m in _members(rel)}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name in wanted and member.isfile() and wanted[name] not in found:
                    f = tar.extractfile(member)
                    if f is not None:
                        found[wanted[name]] = f.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: truncated or corrupt archive ({e})") from e
    missing = [m for m in _members(rel) if m not in found]
    if missing:
        raise DataError(f"{path}: archive lacks {', '.join(rel.folder + '/' + m for m in missing)}")
    return found


def _read_folder(folder: Path, rel: CifarRelease, verify: bool) -> dict[str, bytes]:
    found = {}
    for m in _members(rel):
        path = folder / m
        data = _files.read_bytes(path)
        if verify:
            got = _files.md5_bytes(data)
            if got != rel.member_md5[m]:
                raise DataError(
                    f"{path}: checksum mismatch (md5 {got}, expected {rel.member_md5[m]}); "
                    f"the file is corrupt or not the official {rel.info.name} release"
                )
        found[m] = data
    return found


def _locate(rel: CifarRelease, root: str | os.PathLike | None, download: bool) -> tuple[Path, str]:
    """('archive' | 'folder', path) of the first usable copy; downloads the archive if none."""
    name = rel.info.name
    dirs = _files.search_dirs(name, root)
    for d in dirs:
        folder = d / rel.folder
        if folder.is_dir() and all((folder / m).is_file() for m in _members(rel)):
            return folder, "folder"
        if (d / rel.archive).is_file():
            return d / rel.archive, "archive"
    dest = _files.download_dir(name, root)
    how = f"download {rel.url} into {dest}"
    where = f"{name}: neither {rel.archive} nor {rel.folder}/ found in {_files.looked_in(dirs)}"
    if not _files.downloads_enabled(download):
        raise DataError(f"{where} and downloads are disabled; {how}")
    try:
        _files.fetch(rel.url, dest / rel.archive, rel.md5)
    except (OSError, ValueError) as e:
        raise DataError(f"{where} and the download failed ({e}); {how}") from None
    return dest / rel.archive, "archive"


def _stack(
    batches: list[dict], rel: CifarRelease, sources: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for batch, source in zip(batches, sources):
        data, labels = batch.get(b"data"), batch.get(rel.label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
            raise DataError(f"{source}: expected a uint8 (N, 3072) array under b'data'")
        if data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{source}: expected 3072 values per image, found {data.shape[1]}")
        if labels is None or len(labels) != len(data):
            raise DataError(f"{source}: expected {len(data)} labels under {rel.label_key!r}")
        y = np.asarray(labels, dtype=np.int64)
        if len(y) and (y.min() < 0 or y.max() >= rel.info.num_classes):
            raise DataError(f"{source}: labels outside [0, {rel.info.num_classes})")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(y)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def load_cifar(
    name: str, root: str | os.PathLike | None = None, *, download: bool = True, verify: bool = True
) -> RawData:
    """Load CIFAR10/CIFAR100 as uint8 (N, 3, 32, 32) images and int64 labels."""
    rel = RELEASES[name]
    path, kind = _locate(rel, root, download)
    if kind == "archive":
        if verify:
            got = _files.md5_file(path)
            if got != rel.md5:
                raise DataError(
                    f"{path}: checksum mismatch (md5 {got}, expected {rel.md5}); the archive is "
                    f"corrupt or incomplete — delete it and load again (or download {rel.url})"
                )
        raw = _read_archive(path, rel)
    else:
        raw = _read_folder(path, rel, verify)

    def source(m: str) -> str:
        return f"{path}:{rel.folder}/{m}" if kind == "archive" else str(path / m)

    parsed = {m: safe_unpickle(raw[m], source(m)) for m in _members(rel)}
    train_x, train_y = _stack([parsed[m] for m in rel.train], rel, [source(m) for m in rel.train])
    test_x, test_y = _stack([parsed[m] for m in rel.test], rel, [source(m) for m in rel.test])
    names = parsed[rel.meta].get(rel.names_key)
    classes = None
    if isinstance(names, list) and len(names) == rel.info.num_classes:
        classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return RawData(rel.info, train_x, train_y, test_x, test_y, classes)
