# sparsetrain — `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# torch is installed first and pinned, so pip never resolves a bare `torch` to a CUDA build.
# GPU users: make install TORCH="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu121"
TORCH ?= torch==2.13.0
EXTRAS ?= dev
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

## help: list every target with one line each
help:
	@grep -hE '^## ' $(MAKEFILE_LIST) | sed -E 's/^## ([^:]+): /\1\t/' | awk -F'\t' '{printf "  \033[36m%-34s\033[0m %s\n", $$1, $$2}'

## install: Debian Fashion-MNIST (if root+apt), then $(TORCH), then the project with [dev] extras
install:
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = "0" ]; then \
	  if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
	      || echo "note: could not install dataset-fashion-mnist; Fashion-MNIST will be downloaded on first use"; \
	  fi; \
	else echo "note: not root or no apt-get: skipping the dataset-fashion-mnist Debian package"; fi
	$(PIP) install $(TORCH)
	$(PIP) install -e ".[$(EXTRAS)]"
	@echo "compiling the CPU mask-update kernels into numba's cache (once, ~30 s)"
	$(PYTHON) -c "from sparsetrain.openmp import warm_up; warm_up()"

## test: the test suite without slow-marked checks (a few minutes on 2 cores; CI runs this)
test:
	@$(PYTHON) -m pytest -q -m "not slow" $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

## test-slow: only the slow-marked checks (soak test, SIGTERM/submitit end-to-end runs; ~90 s)
test-slow:
	@$(PYTHON) -m pytest -q -m slow $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

## lint: ruff check + format check
lint:
	ruff check src tests benchmarks examples
	ruff format --check src tests benchmarks examples

## run: train the default job (LeNet-5, Fashion-MNIST, RigL ERK, density 0.2)
run:
	sparsetrain $(ARGS)

-include mk/*.mk
