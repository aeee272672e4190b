"""Where data files are looked for, checksums, and checked downloads.

Search order for a data set `<name>`: the `root` argument (and `<root>/<name>`), then
`$SPARSETRAIN_DATA` (and `$SPARSETRAIN_DATA/<name>`), then data-set specific system
directories (Debian's `/usr/share/datasets/fashion-mnist` for Fashion-MNIST), then the user
cache `${XDG_CACHE_HOME:-~/.cache}/sparsetrain/data/<name>`. Downloads go to `root` when
given, else `$SPARSETRAIN_DATA/<name>`, else the user cache. `SPARSETRAIN_OFFLINE=1` (or
`download=False`) disables downloads.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from sparsetrain.errors import DataError

ENV_DATA = "SPARSETRAIN_DATA"
ENV_OFFLINE = "SPARSETRAIN_OFFLINE"
DOWNLOAD_TIMEOUT = 60.0


def cache_dir(name: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "sparsetrain" / "data" / name


def search_dirs(
    name: str, root: str | os.PathLike | None, extra: Iterable[Path] = ()
) -> list[Path]:
    """Candidate directories in search order, without duplicates (they need not exist)."""
    dirs: list[Path] = []
    if root is not None and str(root) != "":
        r = Path(root).expanduser()
        dirs += [r, r / name]
    env = os.environ.get(ENV_DATA)
    if env:
        e = Path(env).expanduser()
        dirs += [e, e / name]
    dirs += list(extra)
    dirs.append(cache_dir(name))
    seen: set[Path] = set()
    unique = []
    for d in dirs:
        key = d.absolute()
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


def download_dir(name: str, root: str | os.PathLike | None) -> Path:
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(ENV_DATA)
    return Path(env).expanduser() / name if env else cache_dir(name)


def downloads_enabled(download: bool) -> bool:
    return download and os.environ.get(ENV_OFFLINE, "").strip().lower() in ("", "0", "false", "no")


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e


def _open_url(url: str, timeout: float) -> BinaryIO:
    """The only network access of the package (tests replace it)."""
    return urllib.request.urlopen(url, timeout=timeout)


def fetch(url: str, dest: Path, md5: str | None) -> None:
    """Download `url` to `dest` through a temporary file; verify `md5` before renaming.

    Raises OSError-like failures as they come (the caller tries the next mirror) and
    `DataError` when the downloaded bytes do not match the published checksum.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        with _open_url(url, DOWNLOAD_TIMEOUT) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
        if md5 is not None:
            got = md5_file(tmp)
            if got != md5:
                raise DataError(
                    f"download of {url} has md5 {got}, expected {md5}; "
                    f"the mirror served a different file, try again later"
                )
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def looked_in(dirs: Iterable[Path]) -> str:
    return ", ".join(str(d) for d in dirs)
