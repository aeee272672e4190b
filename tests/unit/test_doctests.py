"""The examples in the docstrings run (and give the output they show).

Every module of the package whose source holds a `>>>` example is collected, so a new example
anywhere is tested without touching this file. The engine's public modules must keep at least
one example each: they are what the API reference shows first.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

import sparsetrain

PACKAGE_DIR = Path(sparsetrain.__file__).parent
#: modules whose examples the docs rely on: each must keep at least one
REQUIRED = (
    "sparsetrain.controller",
    "sparsetrain.distributions",
    "sparsetrain.schedules",
    "sparsetrain.ops",
    "sparsetrain.masks",
    "sparsetrain.algorithms.dst",
    "sparsetrain.algorithms.pruning",
    "sparsetrain.algorithms.registry",
)
#: optional dependency a module needs -> skip (not fail) when it is not installed
OPTIONAL = {"sparsetrain.integrations.lightning": "lightning"}


def _modules_with_examples() -> list[str]:
    found = set(REQUIRED)
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if ">>>" in path.read_text(encoding="utf-8"):
            parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.add(".".join(parts))
    return sorted(found)


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples(name):
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name])
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
    if name in REQUIRED:
        assert result.attempted > 0, f"{name} lost its docstring examples"
