"""MkDocs hooks (mkdocs.yml `hooks:`): pages built from the code at build time.

- `<!-- config-reference -->` in a page is replaced by the configuration reference generated
  from the typed schemas and YAML groups (docs/gen_config_reference.py).
- `<!-- include-code: examples/x.py -->` inlines a source file as a fenced code block (a
  missing file is a warning: these are ours and must exist).
- `<!-- include: path/from/repo/root.md -->` inlines a Markdown file produced elsewhere in the
  repository (e.g. benchmarks/results.md); a missing file becomes a visible note instead of a
  broken build, and is reported at INFO level.
- `::: sparsetrain.some.module` (mkdocstrings) for a module that is not in the source tree yet
  becomes a visible note instead of a build error.
- nav entries in OPTIONAL_PAGES (pages other people write) are dropped while their file does not
  exist, and reported.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.sparsetrain")

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
SRC = ROOT / "src"
#: pages written by other people: left out of the nav (with a note) until they exist
OPTIONAL_PAGES = {"experiments.md"}

_INCLUDE = re.compile(r"<!--\s*include:\s*(\S+?)\s*-->")
_INCLUDE_CODE = re.compile(r"<!--\s*include-code:\s*(\S+?)\s*-->")
_LANGUAGES = {".py": "python", ".yaml": "yaml", ".yml": "yaml", ".sh": "bash", ".mk": "make"}
_AUTODOC = re.compile(r"^:::\s+(sparsetrain[\w.]*)\s*$", re.MULTILINE)


def _load_generator():
    spec = importlib.util.spec_from_file_location(
        "gen_config_reference", DOCS / "gen_config_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _module_exists(name: str) -> bool:
    base = SRC.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _drop_missing(nav, docs_dir: Path):
    if isinstance(nav, list):
        kept = []
        for item in nav:
            item = _drop_missing(item, docs_dir)
            if item is not None:
                kept.append(item)
        return kept
    if isinstance(nav, dict):
        out = {}
        for title, value in nav.items():
            value = _drop_missing(value, docs_dir)
            if value is not None:
                out[title] = value
        return out or None
    if isinstance(nav, str) and nav in OPTIONAL_PAGES and not (docs_dir / nav).is_file():
        log.info("optional page %s does not exist yet: left out of the nav", nav)
        return None
    return nav


def on_config(config, **kwargs):
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    if config.get("nav"):
        config["nav"] = _drop_missing(config["nav"], Path(config["docs_dir"]))
    return config


def _include(match: re.Match) -> str:
    rel = match.group(1)
    path = ROOT / rel
    if not path.is_file():
        log.info("include %s: file not found; a note is shown instead", rel)
        return (
            f'!!! note "Not generated yet"\n\n    `{rel}` does not exist in this checkout yet; '
            "it is produced by the command described above.\n"
        )
    text = path.read_text(encoding="utf-8")
    # a heading level-1 in the included file would compete with the page title
    text = re.sub(r"^# ", "## ", text, flags=re.MULTILINE)

    # links relative to the included file do not resolve inside the docs: show their target
    def unlink(m: re.Match) -> str:
        bang, label, target = m.group(1), m.group(2), m.group(3)
        if re.match(r"^(https?:|mailto:|#)", target):
            return m.group(0)
        where = (path.parent / target).relative_to(ROOT) if not target.startswith("/") else target
        return f"*(figure: `{where}`)*" if bang else f"{label} (`{where}`)"

    return re.sub(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)", unlink, text)


def _include_code(match: re.Match) -> str:
    rel = match.group(1)
    path = ROOT / rel
    if not path.is_file():
        log.warning("include-code %s: file not found", rel)
        return f"`{rel}` (missing)"
    language = _LANGUAGES.get(path.suffix, "")
    body = path.read_text(encoding="utf-8").rstrip()
    return f'```{language} title="{rel}"\n{body}\n```'


def _autodoc(match: re.Match) -> str:
    name = match.group(1)
    if _module_exists(name):
        return match.group(0)
    log.info("API page: module %s is not in src/ yet; a note is shown instead", name)
    return f'!!! warning "Not available"\n\n    `{name}` is not part of this version of sparsetrain yet.\n'


#: the published CIFAR-10 WRN-22-2 results at 80 % sparsity (REFERENCE.md): label ->
#: (make target, method, init, training multiplier, test accuracy, train FLOPs, test FLOPs)
PUBLISHED_CIFAR10 = (
    ("Small Dense", "cifar10.Small_Dense", "Small_Dense", None, 1, "91.0 ± 0.07", 0.20, 0.20),
    ("Static", "cifar10.Random.Static", "Static", "random", 1, "91.2 ± 0.16", None, None),
    ("SET", "cifar10.Random.SET", "SET", "random", 1, "92.7 ± 0.28", None, None),
    ("SET (ERK)", "cifar10.ERK.SET", "SET", "ERK", 1, "92.9 ± 0.16", None, None),
    ("Pruning", "cifar10.Pruning", "Pruning", None, 1, "93.2 ± 0.27", 0.41, 0.27),
    ("RigL", "cifar10.Random.RigL", "RigL", "random", 1, "92.6 ± 0.10", 0.20, 0.20),
    ("RigL (ERK)", "cifar10.ERK.RigL", "RigL", "ERK", 1, "93.1 ± 0.09", 0.35, 0.35),
    ("RigL_2x", "cifar10.Random.RigL_2x", "RigL", "random", 2, "93.0 ± 0.21", 0.41, 0.20),
    ("RigL_2x (ERK)", "cifar10.ERK.RigL_2x", "RigL", "ERK", 2, "93.3 ± 0.09", 0.70, 0.35),
)


def _published_table() -> str:
    """Published accuracy and FLOPs beside the FLOPs our accountant computes for the same
    configuration (closed forms on the traced WRN-22-2, at build time)."""
    from sparsetrain.flops import report

    lines = [
        "| method | make target | published test accuracy (%) | published FLOPs train / test "
        "| ours, computed FLOPs train / test |",
        "|---|---|---|---|---|",
    ]
    for label, target, method, init, k, acc, pub_train, pub_test in PUBLISHED_CIFAR10:
        r = report("wrn-22-2", "CIFAR10", method, 0.2, init, training_multiplier=k)
        ours = f"{r['train']:.2f}x / {r['test']:.2f}x" + (" *" if r.get("estimate") else "")
        published = f"{pub_train:.2f}x / {pub_test:.2f}x" if pub_train is not None else "—"
        lines.append(f"| {label} | `make {target}` | {acc} | {published} | {ours} |")
    return "\n".join(lines)


def on_page_markdown(markdown, page, config, files, **kwargs):
    if "<!-- published-cifar10-table -->" in markdown:
        markdown = markdown.replace("<!-- published-cifar10-table -->", _published_table())
    if "<!-- config-reference -->" in markdown:
        generator = _load_generator()
        markdown = markdown.replace("<!-- config-reference -->", generator.render())
        missing = generator.undocumented_keys()
        if missing:
            log.info(
                "config keys without a MEANING entry (shown with their source comment): %s",
                ", ".join(missing),
            )
    markdown = _INCLUDE.sub(_include, markdown)
    markdown = _INCLUDE_CODE.sub(_include_code, markdown)
    return _AUTODOC.sub(_autodoc, markdown)
