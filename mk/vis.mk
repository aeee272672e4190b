# Tables and figures from run directories (`sparsetrain report`, sparsetrain.report.cli).
# Reads only what runs leave behind under $(RUNS_DIR); writes results.{csv,md,tex},
# inference_stats.md and plots/*.png under $(VIS_OUT). Parts mirror the reference's vis.* targets.
RUNS_DIR ?= outputs
VIS_OUT ?= results
VIS_FLAGS ?=
REPORT ?= $(PYTHON) -m sparsetrain.report.cli

VIS_TARGETS := vis vis.fmnist vis.main_result.cifar10 vis.main_result.cifar100 \
	vis.tuning.alpha_deltaT vis.tuning.lr vis.erk_vs_random_FLOPs vis.redist_inference_FLOPs \
	vis.inference_stats
.PHONY: $(VIS_TARGETS)

## vis: every table and figure, report over outputs/ into results/ (RUNS_DIR, VIS_OUT, VIS_FLAGS)
vis:
	$(REPORT) $(RUNS_DIR) --out $(VIS_OUT) $(VIS_FLAGS)

## vis.fmnist: every table and figure for Fashion-MNIST, outputs/FashionMNIST into results/fashion-mnist; README table from it
vis.fmnist:
	$(REPORT) $(RUNS_DIR)/FashionMNIST --out $(VIS_OUT)/fashion-mnist $(VIS_FLAGS)
	$(PYTHON) -m sparsetrain.report.readme $(VIS_OUT)/fashion-mnist/results.md README.md

## vis.main_result.cifar10: CIFAR-10 results table (mean ± std, FLOPs) and accuracy plots into results/cifar10
vis.main_result.cifar10:
	$(REPORT) $(RUNS_DIR)/CIFAR10 --out $(VIS_OUT)/cifar10 --only tables,accuracy $(VIS_FLAGS)

## vis.main_result.cifar100: CIFAR-100 results table (mean ± std, FLOPs) and accuracy plots into results/cifar100
vis.main_result.cifar100:
	$(REPORT) $(RUNS_DIR)/CIFAR100 --out $(VIS_OUT)/cifar100 --only tables,accuracy $(VIS_FLAGS)

## vis.tuning.alpha_deltaT: α/ΔT heatmaps from Optuna studies (outputs/databases/*.db) and grid runs
vis.tuning.alpha_deltaT:
	$(REPORT) $(RUNS_DIR) --out $(VIS_OUT) --only tuning $(VIS_FLAGS)

## vis.tuning.lr: learning-rate grid plots (test accuracy vs lr per α, ΔT)
vis.tuning.lr:
	$(REPORT) $(RUNS_DIR) --out $(VIS_OUT) --only lr $(VIS_FLAGS)

## vis.erk_vs_random_FLOPs: measured training and inference FLOPs per density, ERK vs Random
vis.erk_vs_random_FLOPs:
	$(REPORT) $(RUNS_DIR) --out $(VIS_OUT) --only erk_vs_random $(VIS_FLAGS)

## vis.redist_inference_FLOPs: inference FLOPs over training with and without redistribution (SNFS)
vis.redist_inference_FLOPs:
	$(REPORT) $(RUNS_DIR) --out $(VIS_OUT) --only redist $(VIS_FLAGS)

## vis.inference_stats: train and test FLOPs per method and density (prints and writes inference_stats.md)
vis.inference_stats:
	$(REPORT) $(RUNS_DIR) --out $(VIS_OUT) --only inference_stats $(VIS_FLAGS)
