# FLOPs accounting (issue 5). `sparsetrain flops <overrides>` reports any configured run;
# `make flops FLOPS_ARGS="model=resnet50 dataset=CIFAR100 masking=RigL"` passes overrides.
FLOPS_ARGS ?=

## flops: print the published CIFAR-10 WRN-22-2 FLOPs table next to ours (or FLOPS_ARGS="<overrides>")
flops:
	@$(PYTHON) -m sparsetrain.cli.flops $(if $(strip $(FLOPS_ARGS)),$(FLOPS_ARGS),--reference)
