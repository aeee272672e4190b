"""Typed, strict configuration: dataclass schemas registered in Hydra's ConfigStore.

Field names are the reference system's (so existing command lines keep working); fields that
are ours are marked "(ours)". YAML groups under `conf/` fill these schemas; an unknown key or
a wrong type is an error before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


@dataclass
class DatasetConfig:
    """`dataset=<NAME>`: which data set, where its files are, batch sizes and split."""

    name: str = MISSING
    root: str = "datasets/${dataset.name}"
    batch_size: int = 128
    test_batch_size: int = "${dataset.batch_size}"  # type: ignore[assignment]
    max_threads: int = 2
    validation_split: float = 0.1
    fixed_shuffle: bool = False
    augment: bool = True  # (ours) random crop + flip where the data set defines it


@dataclass
class OptimizerConfig:
    """`optimizer=SGD|Adam`: optimizer, epochs and the learning-rate schedule (steps are optimizer steps)."""

    name: str = "SGD"
    epochs: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    decay_frequency: int = 25000
    decay_factor: float = 0.1
    warmup_steps: int = 0
    use_nesterov: bool = True
    training_multiplier: int = 1
    lr_schedule: str = "step"  # (ours) step | cosine
    gradient_accumulation: int = 1  # (ours) micro-batches per optimizer step


@dataclass
class MaskingConfig:
    """`masking=<Method>`: the sparse-training method and its options (reference field names)."""

    name: str = "RigL"
    density: float = 0.2
    sparse_init: str = "erdos-renyi-kernel"
    dense_gradients: bool = False
    growth_mode: str = "absolute-gradient"
    prune_mode: str = "magnitude"
    redistribution_mode: str = "none"
    dense: bool = False
    prune_rate: float = 0.3
    decay_schedule: str = "cosine"
    apply_when: str = "step_end"
    start_when: float = 0
    end_when: float = (
        0.75  # steps (epochs under epoch_end); a float in (0, 1) = fraction of training
    )
    interval: int = 100
    final_density: float | None = None
    init_exp_name: str | None = None
    override_dir: str | None = None
    lottery_mask_path: str | None = None
    print_FLOPs: bool = True
    sparse_kernels: bool = False  # (ours) train sparse-enough Linear layers on CSR kernels
    scale_init: bool = False  # (ours) initial weights rescaled to each unit's sparse fan-in


@dataclass
class WandbConfig:
    """Weights & Biases logging (off by default; offline when there is no key or network)."""

    use: bool = False
    api_key: str = "wandb_api.key"
    entity: str | None = None
    project: str = "sparsetrain"
    name: str = "${exp_name}"


@dataclass
class Config:
    """The whole run: groups above plus seeds, model, device, logging and checkpointing."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    exp_name: str = "${run_label:${masking.name},${masking.sparse_init},${masking.dense}}"
    seed: int = 0
    multi_seed: list[int] = field(default_factory=list)
    model: str = "lenet5"
    width: float = 1.0  # (ours) channel multiplier; Small_Dense sets it from the density
    device: str = "auto"
    sync_bn: bool = False  # (ours) DDP: SyncBatchNorm, statistics over the global batch (GPUs)
    log_interval: int = 100
    ckpt_dir: str = "ckpts"
    ckpt_interval: int = "${optimizer.epochs}"  # type: ignore[assignment]
    ckpt_every_steps: int = 0  # (ours) also checkpoint every N optimizer steps (0 = off)
    keep_last_ckpts: int = 2  # (ours) epoch checkpoints kept (last.pt always kept)
    val_interval: int = 1
    resume: bool = True
    on_nonfinite_loss: str = "stop"  # (ours) stop | skip
    progress: bool = True  # (ours) rich progress bar


INIT_LABELS = {
    "random": "Random",
    "uniform": "Random",
    "erdos-renyi": "ER",
    "ER": "ER",
    "erdos-renyi-kernel": "ERK",
    "ERK": "ERK",
    "lottery-ticket": "Lottery",
    "lottery": "Lottery",
    "struct-random": "StructRandom",
    "struct-erdos-renyi": "StructER",
    "struct-erdos-renyi-kernel": "StructERK",
}


def run_label(method: str, sparse_init: str, dense: Any = False) -> str:
    """Default `exp_name`: method and init, e.g. `RigL_ERK` (dense methods: just the name)."""
    label = INIT_LABELS.get(sparse_init, sparse_init)
    if str(dense).lower() == "true" or method in ("Dense", "Small_Dense", "Pruning"):
        return method  # dense start: the init does not apply
    if label == "Lottery":
        return method  # the mask comes from the source run
    return f"{method}_{label}"


def register_configs() -> None:
    """Register the schemas and resolvers (idempotent)."""
    if not OmegaConf.has_resolver("run_label"):
        OmegaConf.register_new_resolver("run_label", run_label)
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="dataset", name="schema", node=DatasetConfig)
    cs.store(group="optimizer", name="schema", node=OptimizerConfig)
    cs.store(group="masking", name="schema", node=MaskingConfig)
