"""IDX files (MNIST, Fashion-MNIST): parser, checksum verification, search and download.

The IDX format: two zero bytes, a type code, the number of dimensions, one big-endian uint32
per dimension, then the data (big-endian). Files may be gzip-compressed (detected by their
magic bytes, whatever their name). Checksums are md5s of the *decompressed* bytes, so a
re-compressed copy (Debian's `dataset-fashion-mnist` ships different .gz files than upstream)
verifies as well as upstream's.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from sparsetrain.data import _files
from sparsetrain.data.info import FASHION_MNIST, MNIST, DatasetInfo
from sparsetrain.data.types import RawData
from sparsetrain.errors import DataError

# type code -> (numpy dtype of the big-endian data)
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# md5 of the decompressed files. Fashion-MNIST: REFERENCE.md (Debian), identical to upstream's
# decompressed files. MNIST: the official release as decompressed from yann.lecun.com's .gz.
RAW_MD5: dict[str, dict[str, str]] = {
    "FashionMNIST": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    "MNIST": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
}
# md5 of the upstream .gz files, checked on download.
GZ_MD5: dict[str, dict[str, str]] = {
    "FashionMNIST": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "MNIST": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
}
MIRRORS: dict[str, tuple[str, ...]] = {
    "FashionMNIST": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    "MNIST": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
}
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "FashionMNIST": (Path("/usr/share/datasets/fashion-mnist"),),
    "MNIST": (),
}
INFOS: dict[str, DatasetInfo] = {"FashionMNIST": FASHION_MNIST, "MNIST": MNIST}
CLASSES: dict[str, tuple[str, ...]] = {
    "FashionMNIST": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "MNIST": tuple(str(i) for i in range(10)),
}


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode uncompressed IDX bytes into a native-endian array; strict about the size."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise DataError(f"{source}: not an IDX file (bad magic number)")
    dtype, ndim = IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{source}: truncated or corrupt IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "corrupt (trailing bytes)"
        raise DataError(
            f"{source}: {what} IDX file: its header {tuple(dims)} needs {expected} bytes, "
            f"found {len(data)}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx_bytes(path: str | os.PathLike) -> bytes:
    """The decompressed bytes of an IDX file (gzip detected by its magic bytes)."""
    path = Path(path)
    data = _files.read_bytes(path)
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(f"{path}: truncated or corrupt gzip file ({e})") from e
    return data


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, raw or gzip-compressed."""
    return parse_idx(read_idx_bytes(path), str(path))


def _find_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _find_set(dirs: list[Path]) -> dict[str, Path] | None:
    """The first directory (or its `raw/` subfolder, torchvision's layout) with all four files."""
    for d in dirs:
        for candidate in (d, d / "raw"):
            found = {key: _find_file(candidate, stem) for key, stem in FILES.items()}
            if all(found.values()):
                return found  # type: ignore[return-value]
    return None


def _download(name: str, dest: Path) -> dict[str, Path]:
    errors = []
    paths = {}
    for key, stem in FILES.items():
        filename = f"{stem}.gz"
        target = dest / filename
        if not target.is_file():
            for mirror in MIRRORS[name]:
                try:
                    _files.fetch(mirror + filename, target, GZ_MD5[name][filename])
                    break
                except (OSError, ValueError) as e:
                    errors.append(f"{mirror + filename}: {e}")
            else:
                raise _DownloadFailed("; ".join(errors[-len(MIRRORS[name]) :]))
        paths[key] = target
    return paths


class _DownloadFailed(Exception):
    pass


def _missing_message(name: str, dirs: list[Path], dest: Path, reason: str) -> str:
    files = ", ".join(f"{stem}[.gz]" for stem in FILES.values())
    how = f"download the four .gz files from {MIRRORS[name][0]} into {dest}"
    if name == "FashionMNIST":
        how = f"run `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or {how}"
    return f"{name}: data files ({files}) not found in {_files.looked_in(dirs)} and {reason}; {how}"


def locate(name: str, root: str | os.PathLike | None, download: bool = True) -> dict[str, Path]:
    """Paths of the four IDX files of `name`, downloading them into root when missing."""
    dirs = _files.search_dirs(name, root, SYSTEM_DIRS[name])
    found = _find_set(dirs)
    if found is not None:
        return found
    dest = _files.download_dir(name, root)
    if not _files.downloads_enabled(download):
        raise DataError(_missing_message(name, dirs, dest, "downloads are disabled"))
    try:
        return _download(name, dest)
    except _DownloadFailed as e:
        raise DataError(_missing_message(name, dirs, dest, f"the download failed ({e})")) from None


def _load_verified(path: Path, name: str, stem: str, verify: bool) -> np.ndarray:
    data = read_idx_bytes(path)
    array = parse_idx(data, str(path))
    if verify:
        expected = RAW_MD5[name][stem]
        got = _files.md5_bytes(data)
        if got != expected:
            raise DataError(
                f"{path}: checksum mismatch (md5 of the decompressed data {got}, expected "
                f"{expected}); the file is corrupt or not the official {name} release — delete "
                f"it and load again (or pass verify=False for your own files)"
            )
    return array


def load_idx_dataset(
    name: str, root: str | os.PathLike | None = None, *, download: bool = True, verify: bool = True
) -> RawData:
    """Load MNIST or Fashion-MNIST as uint8 (N, 1, 28, 28) images and int64 labels."""
    info = INFOS[name]
    paths = locate(name, root, download)
    arrays = {key: _load_verified(paths[key], name, FILES[key], verify) for key in FILES}
    out = []
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        img_path, lbl_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        if images.ndim != 3 or tuple(images.shape[1:]) != info.image_size:
            raise DataError(
                f"{img_path}: expected images of shape (N, {info.image_size[0]}, "
                f"{info.image_size[1]}), found {tuple(images.shape)}"
            )
        if images.dtype != np.uint8 or labels.dtype != np.uint8 or labels.ndim != 1:
            raise DataError(f"{img_path}, {lbl_path}: expected uint8 images and 1-d uint8 labels")
        if len(labels) != len(images):
            raise DataError(
                f"{lbl_path}: {len(labels)} labels for {len(images)} images in {img_path}"
            )
        if len(labels) and int(labels.max()) >= info.num_classes:
            raise DataError(f"{lbl_path}: label {int(labels.max())} >= {info.num_classes} classes")
        out.append(torch.from_numpy(images).unsqueeze(1))
        out.append(torch.from_numpy(labels.astype(np.int64)))
    return RawData(info, out[0], out[1], out[2], out[3], CLASSES[name])
