# Experiment targets: the reference RigL reproducibility sweeps (CIFAR-10 / CIFAR-100) under the
# same names, plus their CPU-scale Fashion-MNIST equivalents. Every target is one Hydra (multi)run
# of the `sparsetrain` app; `make -n <target>` prints the exact commands.
#
# Comma lists sweep: `make cifar10.ERK.RigL DENSITY=0.05,0.1 SEED=0,1,2` is one multirun of 6 jobs.
# Run directories: outputs/<dataset>/<exp_name>/<density>/<overrides>/ for runs and multiruns alike
# (docs/experiments.md).

DENSITY ?= 0.2
SEED ?= 0
USE_WANDB ?= False
HYDRA_FLAGS ?= -m
N_JOBS ?= 1
DEVICE ?=
ARGS ?=
SPARSETRAIN ?= sparsetrain
FMNIST_MODEL ?= lenet5
AUTO_SOURCE ?= 1

## experiment variables: DENSITY=0.2 SEED=0 (comma lists sweep) USE_WANDB=False HYDRA_FLAGS=-m N_JOBS=1 DEVICE= ARGS= FMNIST_MODEL=lenet5 AUTO_SOURCE=1

st_comma := ,
st_empty :=
st_space := $(st_empty) $(st_empty)
define st_newline


endef
st_list = $(subst $(st_comma),$(st_space),$(1))
st_join = $(subst $(st_space),$(st_comma),$(strip $(1)))
# `make -n` / `make --dry-run`
ST_DRY_RUN = $(findstring n,$(firstword -$(MAKEFLAGS)))

# N_JOBS > 1: run the jobs of a multirun in parallel (hydra-joblib-launcher, `tune`/`launchers` extra)
ST_LAUNCHER = $(if $(filter-out 1,$(N_JOBS)),hydra/launcher=joblib hydra.launcher.n_jobs=$(N_JOBS))
# Overrides left out of the run-directory name (conf/config.yaml exclude_keys) and extra ARGS
ST_OPTS = wandb.use=$(USE_WANDB)$(if $(DEVICE), device=$(DEVICE))$(if $(ST_LAUNCHER), $(ST_LAUNCHER))$(if $(ARGS), $(ARGS))
ST_TAIL = $(ST_OPTS) $(HYDRA_FLAGS)
# seed=... only when SEED is given on the command line (tuning targets: reference directory names)
ST_SEED_IF_GIVEN = $(if $(filter command line,$(origin SEED)), seed=$(SEED))

# ---------------------------------------------------------------------------------------------
# Families: <prefix> -> Hydra dataset, specific-config stem, extra Pruning overrides
ST_FAMILIES := cifar10 cifar100 fmnist
ST_DATASET_cifar10 := CIFAR10
ST_DATASET_cifar100 := CIFAR100
ST_DATASET_fmnist := FashionMNIST
ST_SPECIFIC_cifar10 := cifar10_wrn_22_2
ST_SPECIFIC_cifar100 := cifar100_resnet50
ST_SPECIFIC_fmnist = fmnist_$(FMNIST_MODEL)
# The reference trains the CIFAR-10 Pruning runs (the Lottery sources) with a 3500-step warmup.
ST_PRUNING_ARGS_cifar10 := optimizer.warmup_steps=3500

ST_INITS := ERK Random
ST_DYNAMIC := RigL SNFS SET
# <Method> -> masking group, specific-config suffix, extra overrides
ST_METHODS := Static $(ST_DYNAMIC) $(foreach k,2x 3x,$(addsuffix _$(k),$(ST_DYNAMIC))) RigL_reinit
st_masking = $(if $(filter RigL_reinit,$(1)),RigL_reinit,$(firstword $(subst _, ,$(1))))
st_suffix = $(if $(filter Static,$(1)),static,$(if $(filter RigL_reinit,$(1)),masking_reinit,masking))
st_multiplier = $(if $(filter %_2x,$(1)), optimizer.training_multiplier=2,$(if $(filter %_3x,$(1)), optimizer.training_multiplier=3))
# Random init: uniform layer densities; RigL_reinit takes its mask from the RigL_<Init> run instead
st_init_args = $(if $(filter Random,$(2)),$(if $(filter RigL_reinit,$(1)), masking.init_exp_name=RigL_Random, masking.sparse_init=random))

# $(call st_cmd,<family>,<masking>,<specific suffix>,<overrides>): one sparsetrain command line
st_cmd = $(SPARSETRAIN) dataset=$(ST_DATASET_$(1)) optimizer=SGD masking=$(2) +specific=$(ST_SPECIFIC_$(1))_$(3) $(4) $(ST_TAIL)

# ---------------------------------------------------------------------------------------------
# Source runs of Lottery (a Pruning run) and RigL_reinit (a RigL run). The directories below are
# what the source targets write, and what specific/*_lottery.yaml / *_masking_reinit.yaml read.
# $(call st_pruning_dir,<family>,<density>,<seed>)
st_pruning_dir = outputs/$(ST_DATASET_$(1))/Pruning/1.0/+specific=$(ST_SPECIFIC_$(1))_pruning$(st_comma)masking.final_density=$(2)$(if $(ST_PRUNING_ARGS_$(1)),$(st_comma)$(ST_PRUNING_ARGS_$(1)))$(st_comma)seed=$(3)
# $(call st_rigl_dir,<family>,<density>,<seed>,<Init>)
st_rigl_dir = outputs/$(ST_DATASET_$(1))/RigL_$(4)/$(2)/+specific=$(ST_SPECIFIC_$(1))_masking$(st_comma)seed=$(3)
# a run directory holding a final checkpoint (ours: ckpts/last.pt; the reference: ckpts/epoch_<N>.pth)
st_has_ckpt = $(shell { test -e '$(1)/ckpts/last.pt' || ls '$(1)'/ckpts/epoch_*.pth; } >/dev/null 2>&1 && echo y)
# $(call st_missing,<dir function>,<family>,<Init>): "density;seed" pairs whose source is missing
st_missing = $(strip $(foreach d,$(call st_list,$(DENSITY)),$(foreach s,$(call st_list,$(SEED)),$(if $(call st_has_ckpt,$(call $(1),$(2),$(d),$(s),$(3))),,$(d);$(s)))))
st_missing_d = $(call st_join,$(sort $(foreach p,$(1),$(firstword $(subst ;, ,$(p))))))
st_missing_s = $(call st_join,$(sort $(foreach p,$(1),$(lastword $(subst ;, ,$(p))))))
st_source_error = @echo "$(3): missing source checkpoint(s) for DENSITY;SEED = $(2). Run first: make $(1) DENSITY=$(call st_missing_d,$(2)) SEED=$(call st_missing_s,$(2))  (or leave AUTO_SOURCE=1 to run it automatically)" >&2; exit 2
# $(call st_source_step,<source target>,<missing pairs>,<this target>): a recipe line that runs the
# missing source runs first (AUTO_SOURCE=1) or stops with the exact command (AUTO_SOURCE=0). Inside
# an aggregate (cifar10, fmnist, ...) the source target has already run earlier in the same make.
st_source_step = $(if $(2),$(if $(ST_IN_SWEEP),$(if $(ST_DRY_RUN),@: $(3) reads the checkpoints written by $(1) above,$(call st_source_error,$(1),$(2),$(3))),$(if $(filter 1,$(AUTO_SOURCE)),+$(MAKE) --no-print-directory $(1) DENSITY=$(call st_missing_d,$(2)) SEED=$(call st_missing_s,$(2)),$(call st_source_error,$(1),$(2),$(3)))))

# ---------------------------------------------------------------------------------------------
# Rules generated for every family

# $(call st_init_method_rules,<family>,<Init>,<Method>)
define st_init_method_rules
.PHONY: $(1).$(2).$(3)
$(1).$(2).$(3):
	$$(if $$(filter RigL_reinit,$(3)),$$(call st_source_step,$(1).$(2).RigL,$$(call st_missing,st_rigl_dir,$(1),$(2)),$$@))
	$$(call st_cmd,$(1),$$(call st_masking,$(3)),$$(call st_suffix,$(3)),exp_name=$(3)_$(2) masking.density=$$(DENSITY) seed=$$(SEED)$$(call st_multiplier,$(3))$$(call st_init_args,$(3),$(2)))
endef

# $(call st_family_rules,<family>)
define st_family_rules
.PHONY: $(1).Dense $(1).Small_Dense $(1).Small-Dense $(1).Pruning $(1).Lottery
$(1).Dense:
	$$(call st_cmd,$(1),Dense,dense,exp_name=Dense seed=$$(SEED))
$(1).Small_Dense:
	$$(call st_cmd,$(1),Small_Dense,dense,exp_name=Small_Dense masking.density=$$(DENSITY) seed=$$(SEED))
$(1).Small-Dense: $(1).Small_Dense
$(1).Pruning:
	$$(call st_cmd,$(1),Pruning,pruning,exp_name=Pruning seed=$$(SEED)$$(if $$(ST_PRUNING_ARGS_$(1)), $$(ST_PRUNING_ARGS_$(1))) masking.final_density=$$(DENSITY))
$(1).Lottery:
	$$(call st_source_step,$(1).Pruning,$$(call st_missing,st_pruning_dir,$(1)),$$@)
	$$(call st_cmd,$(1),Lottery,lottery,exp_name=Lottery seed=$$(SEED) masking.density=$$(DENSITY))
$(foreach i,$(ST_INITS),$(foreach m,$(ST_METHODS),$(call st_init_method_rules,$(1),$(i),$(m))$(st_newline)))
# reference spellings
$(foreach i,$(ST_INITS),$(1).Static.$(i): $(1).$(i).Static$(st_newline))
$(foreach k,2x 3x,$(foreach i,$(ST_INITS),$(foreach m,$(ST_DYNAMIC),$(1).$(k).$(i).$(m): $(1).$(i).$(m)_$(k)$(st_newline))))
.PHONY: $(foreach i,$(ST_INITS),$(1).Static.$(i) $(foreach k,2x 3x,$(addprefix $(1).$(k).$(i).,$(ST_DYNAMIC))))
endef

$(foreach f,$(ST_FAMILIES),$(eval $(call st_family_rules,$(f))))

# When an aggregate is a goal, its dependent runs wait for their source runs even under `make -j`
# (each phony target still runs once).
define st_sweep_order
ifneq ($$(filter $(1),$$(MAKECMDGOALS)),)
$(1).Lottery: $(1).Pruning
$(1).ERK.RigL_reinit: $(1).ERK.RigL
$(1).Random.RigL_reinit: $(1).Random.RigL
endif
endef
$(foreach f,$(ST_FAMILIES),$(eval $(call st_sweep_order,$(f))))

# ---------------------------------------------------------------------------------------------
## cifar10.<Init>.<Method>: WRN-22-2 on CIFAR-10; Init in {ERK,Random}; Method in {Static,SET,SNFS,RigL,RigL_2x,RigL_3x,RigL_reinit} (also SET/SNFS_2x/_3x); exp_name <Method>_<Init>
## cifar10.Static.<Init>: reference spelling of cifar10.<Init>.Static (exp_name Static_<Init>)
## cifar10.2x.<Init>.<M>: reference spelling of cifar10.<Init>.<M>_2x (optimizer.training_multiplier=2); also cifar10.3x.<Init>.<M>; M in {RigL,SNFS,SET}
## cifar10.Dense: dense WRN-22-2, one run per SEED
## cifar10.Small_Dense: dense WRN-22-2 with ~DENSITY x the parameters (alias cifar10.Small-Dense)
## cifar10.Pruning: gradual magnitude pruning to masking.final_density=DENSITY (warmup 3500 steps, as the reference)
## cifar10.Lottery: lottery tickets from the cifar10.Pruning runs (runs missing sources first; AUTO_SOURCE=0 stops instead)
CIFAR10_DEPS := cifar10.ERK.RigL cifar10.ERK.SNFS cifar10.ERK.SET
CIFAR10_DEPS += cifar10.Random.RigL cifar10.Random.SNFS cifar10.Random.SET
CIFAR10_DEPS += cifar10.ERK.RigL_2x cifar10.ERK.SNFS_2x cifar10.ERK.SET_2x
CIFAR10_DEPS += cifar10.Random.RigL_2x cifar10.Random.SNFS_2x cifar10.Random.SET_2x
CIFAR10_DEPS += cifar10.Random.RigL_3x cifar10.ERK.RigL_3x
CIFAR10_DEPS += cifar10.Pruning cifar10.Lottery cifar10.Small_Dense
CIFAR10_DEPS += cifar10.ERK.Static cifar10.Random.Static
CIFAR10_DEPS += cifar10.Dense cifar10.ERK.RigL_reinit cifar10.Random.RigL_reinit
## cifar10: the whole CIFAR-10 sweep (reference main results + Dense, RigL_3x ERK, RigL_reinit), e.g. DENSITY=0.05,0.1,0.2,0.5
.PHONY: cifar10
cifar10: ST_IN_SWEEP := 1
cifar10: $(CIFAR10_DEPS)

## cifar100.<Init>.<Method>: ResNet-50 on CIFAR-100; same Init/Method set and reference spellings as cifar10.*
## cifar100.Dense: dense ResNet-50; also cifar100.Small_Dense (cifar100.Small-Dense), cifar100.Pruning, cifar100.Lottery
CIFAR100_DEPS := cifar100.ERK.RigL cifar100.ERK.SNFS cifar100.ERK.SET
CIFAR100_DEPS += cifar100.Random.RigL cifar100.Random.SNFS cifar100.Random.SET
CIFAR100_DEPS += cifar100.ERK.RigL_2x cifar100.Random.RigL_2x cifar100.Random.RigL_3x cifar100.ERK.RigL_3x
CIFAR100_DEPS += cifar100.Pruning cifar100.Lottery cifar100.Small_Dense
CIFAR100_DEPS += cifar100.ERK.Static cifar100.Random.Static
CIFAR100_DEPS += cifar100.Dense cifar100.ERK.RigL_reinit cifar100.Random.RigL_reinit
## cifar100: the whole CIFAR-100 sweep (reference main results + Dense, RigL_3x ERK, RigL_reinit)
.PHONY: cifar100
cifar100: ST_IN_SWEEP := 1
cifar100: $(CIFAR100_DEPS)

# ---------------------------------------------------------------------------------------------
# CIFAR-10 tuning (reference): learning-rate grid and Optuna over alpha / Delta T
# $(call st_lr_grid,<Init>,<alpha>,<Delta T>)
st_lr_grid = $(SPARSETRAIN) dataset=CIFAR10 optimizer=SGD masking=RigL +specific=cifar10_wrn_22_2_grid_lr exp_name=RigL_$(1)_grid_lr masking.density=$(DENSITY) masking.prune_rate=$(2) masking.interval=$(3)$(if $(filter Random,$(1)), masking.sparse_init=random) optimizer.lr=0.1,0.05,0.01,0.005$(ST_SEED_IF_GIVEN) $(ST_OPTS) -m
# $(call st_optuna,<family>,<Init>,<density>): one study per density (a comma list given to the
# Optuna sweeper would become a search dimension, not a loop)
st_optuna = $(SPARSETRAIN) hydra/sweeper=optuna dataset=$(ST_DATASET_$(1)) optimizer=SGD masking=RigL +specific=$(ST_SPECIFIC_$(1))_optuna exp_name=RigL_$(2)_optuna_multiseed masking.density=$(3) multi_seed='[0,1,2]' $(ST_OPTUNA_SPACE_$(1))$(if $(filter Random,$(2)), masking.sparse_init=random)$(ST_SEED_IF_GIVEN) $(ST_OPTS) -m
ST_OPTUNA_SPACE_cifar10 := 'masking.prune_rate=interval(0.1,0.6)' 'masking.interval=range(50,1000,50)'
ST_OPTUNA_SPACE_fmnist := 'masking.prune_rate=interval(0.1,0.6)' 'masking.interval=range(10,300,10)'

## cifar10_lr_grid: RigL ERK and Random, optimizer.lr in {0.1,0.05,0.01,0.005} x (alpha;Delta T) in {(0.3;100),(0.4;200),(0.4;500),(0.5;750)}
.PHONY: cifar10_lr_grid
cifar10_lr_grid:
	$(call st_lr_grid,ERK,0.3,100)
	$(call st_lr_grid,ERK,0.4,200)
	$(call st_lr_grid,ERK,0.4,500)
	$(call st_lr_grid,ERK,0.5,750)
	$(call st_lr_grid,Random,0.3,100)
	$(call st_lr_grid,Random,0.4,200)
	$(call st_lr_grid,Random,0.4,500)
	$(call st_lr_grid,Random,0.5,750)

# $(call st_optuna_rule,<family>,<Init>)
define st_optuna_rule
.PHONY: $(1)_$(2)_alpha_deltaT_optuna
$(1)_$(2)_alpha_deltaT_optuna:
	@mkdir -p outputs/databases
	$$(foreach d,$$(call st_list,$$(DENSITY)),$$(call st_optuna,$(1),$(2),$$(d))$$(st_newline))
endef
$(foreach f,cifar10 fmnist,$(foreach i,$(ST_INITS),$(eval $(call st_optuna_rule,$(f),$(i)))))

## cifar10_ERK_alpha_deltaT_optuna: Optuna (TPE seed 123, 15 trials, sqlite outputs/databases/) over alpha and Delta T for RigL ERK, mean val acc of seeds 0-2; one study per DENSITY; re-run continues
## cifar10_Random_alpha_deltaT_optuna: the same for RigL Random
## cifar10_tune: cifar10_lr_grid + both Optuna studies
.PHONY: cifar10_tune
cifar10_tune: cifar10_lr_grid cifar10_ERK_alpha_deltaT_optuna cifar10_Random_alpha_deltaT_optuna

# ---------------------------------------------------------------------------------------------
## fmnist.<Init>.<Method>: CPU-scale Fashion-MNIST (LeNet-5; FMNIST_MODEL=lenet300 for LeNet-300-100), same Init/Method set as cifar10.*
## fmnist.Dense: dense baseline; also fmnist.Small_Dense, fmnist.Pruning, fmnist.Lottery (as cifar10.*)
FMNIST_DEPS := fmnist.Dense fmnist.Small_Dense fmnist.ERK.Static fmnist.ERK.SET fmnist.ERK.SNFS
FMNIST_DEPS += fmnist.Random.RigL fmnist.ERK.RigL fmnist.ERK.RigL_2x fmnist.Pruning fmnist.Lottery
## fmnist: the CPU-scale sweep (Dense Small_Dense Static/SET/SNFS ERK, RigL Random/ERK, RigL_2x ERK, Pruning, Lottery), e.g. DENSITY=0.05,0.1,0.2 SEED=0,1,2
.PHONY: fmnist
fmnist: ST_IN_SWEEP := 1
fmnist: $(FMNIST_DEPS)
## fmnist_ERK_alpha_deltaT_optuna: Optuna over alpha and Delta T for RigL ERK on Fashion-MNIST (also fmnist_Random_alpha_deltaT_optuna)
## fmnist_tune: both Fashion-MNIST Optuna studies
.PHONY: fmnist_tune
fmnist_tune: fmnist_ERK_alpha_deltaT_optuna fmnist_Random_alpha_deltaT_optuna
