# Performance benchmarks (issue 10): masking overhead, mask-update cost, sparse export, peer.

BENCH_ARGS ?=
.PHONY: bench bench-quick

## bench: masked-step/update/export ratios vs dense and vs rigl-torch, trainer vs a plain loop -> benchmarks/results.md (BENCH_ARGS=--quick)
bench:
	$(PYTHON) benchmarks/run.py $(BENCH_ARGS)

## bench-quick: the same benchmark with fewer rounds (shared machine? BENCH_ARGS="--threads 1 --clock cpu")
bench-quick:
	$(PYTHON) benchmarks/run.py --quick $(BENCH_ARGS)
