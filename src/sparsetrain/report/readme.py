"""Copy the report's "test accuracy by density" tables into a README between markers.

    python -m sparsetrain.report.readme results/fashion-mnist/results.md README.md

Why: the README's results table must be the report's, not a hand copy that drifts. Every
`### <title> · test accuracy by density` section of the report's `results.md` is copied, under
a bold `<title>` line, between `<!-- results-table:begin -->` and `<!-- results-table:end -->`
(a test checks that the committed README holds exactly the committed report's tables).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from sparsetrain.errors import SparsetrainError

BEGIN, END = "<!-- results-table:begin -->", "<!-- results-table:end -->"
SECTION_SUFFIX = " · test accuracy by density"


def accuracy_tables(results_md: str) -> str:
    """The "test accuracy by density" tables of a report, each under a bold title line."""
    blocks, lines = [], results_md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("### ") and line.endswith(SECTION_SUFFIX):
            table = []
            for row in lines[i + 1 :]:
                if row.startswith("#"):
                    break
                if row.startswith("|"):
                    table.append(row)
                elif table:  # the table has ended
                    break
            title = line[4 : -len(SECTION_SUFFIX)]
            blocks.append("\n".join([f"**{title}**", "", *table]))
    if not blocks:
        raise SparsetrainError(f"no '###{SECTION_SUFFIX}' section in the report")
    return "\n\n".join(blocks)


def splice(readme: str, tables: str) -> str:
    """`readme` with the text between the markers replaced by `tables`."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise SparsetrainError(f"README has no {BEGIN} ... {END} block to fill")
    return readme[: start + len(BEGIN)] + "\n" + tables + "\n" + readme[end:]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m sparsetrain.report.readme RESULTS_MD README_MD", file=sys.stderr)
        return 2
    results, readme = (Path(a) for a in args)
    try:
        text = splice(readme.read_text(), accuracy_tables(results.read_text()))
    except (OSError, SparsetrainError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    readme.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
