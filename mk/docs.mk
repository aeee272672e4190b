# Documentation site (mkdocs-material + mkdocstrings; the `docs` extra). The configuration
# reference, the published-results table and the API pages are generated at build time
# (docs/hooks.py), so they follow the code.
MKDOCS ?= $(PYTHON) -m mkdocs
DOCS_SITE ?= site
DOCS_ADDR ?= 127.0.0.1:8000

.PHONY: docs docs-serve docs-figures

## docs: build the documentation site into site/ with mkdocs build --strict (any warning fails)
docs:
	NO_MKDOCS_2_WARNING=1 $(MKDOCS) build --strict --site-dir $(DOCS_SITE)

## docs-serve: serve the documentation with live reload on http://127.0.0.1:8000 (DOCS_ADDR)
docs-serve:
	NO_MKDOCS_2_WARNING=1 $(MKDOCS) serve --dev-addr $(DOCS_ADDR)

## docs-figures: redraw the Concepts figures (docs/img/*.png) from the engine's own functions
docs-figures:
	MPLBACKEND=Agg $(PYTHON) docs/gen_figures.py
