"""The documentation site builds with `mkdocs build --strict` (any warning fails), and the
configuration reference it generates covers every key of the typed schemas."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings")
pytest.importorskip("material")


def _generator():
    spec = importlib.util.spec_from_file_location(
        "gen_config_reference", ROOT / "docs" / "gen_config_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_reference_lists_every_schema_key():
    gen = _generator()
    text = gen.render()
    for _, cls, prefix, _ in gen.SECTIONS:
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(gen._default(f)):
                continue
            assert f"`{prefix}{f.name}`" in text, f"{prefix}{f.name} missing from the reference"
    assert "`masking=<option>`" in text or "`masking` group" in text


def test_mkdocs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    site = tmp_path / "site"
    for page in ("index.html", "concepts/index.html", "configuration/index.html",
                 "api/controller/index.html", "custom-loop/index.html"):  # fmt: skip
        assert (site / page).is_file(), page
    config_page = (site / "configuration" / "index.html").read_text(encoding="utf-8")
    assert "masking.prune_rate" in config_page and "config-reference" not in config_page
    loop_page = (site / "custom-loop" / "index.html").read_text(encoding="utf-8")
    assert "sparsetrain.sparsify" in loop_page  # the example file was inlined
