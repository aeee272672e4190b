"""Every config composes: all dataset x optimizer x masking groups, every `+specific=` file and the
launcher configs; the reference's values and run-directory names hold."""

from __future__ import annotations

import itertools
from importlib import resources

import pytest
from hydra import compose
from omegaconf import OmegaConf, open_dict

from sparsetrain.config import Config

CONF = resources.files("sparsetrain.conf")


def _names(group: str) -> list[str]:
    return sorted(
        p.name[: -len(".yaml")] for p in (CONF / group).iterdir() if p.name.endswith(".yaml")
    )


DATASETS = _names("dataset")
OPTIMIZERS = _names("optimizer")
MASKINGS = _names("masking")
SPECIFICS = _names("specific")

# The masking group each specific config is meant for (make targets pass it; the files that
# fix a method also select it in their defaults list).
SPECIFIC_MASKING = {
    "masking": ["RigL", "SET", "SNFS", "Static"],
    "dense": ["Dense", "Small_Dense"],
    "static": ["Static"],
    "pruning": ["Pruning"],
    "lottery": ["Lottery"],
    "masking_reinit": ["RigL_reinit"],
    "grid_lr": ["RigL"],
    "optuna": ["RigL"],
}


def _kind(specific: str) -> str:
    for kind in sorted(SPECIFIC_MASKING, key=len, reverse=True):
        if specific.endswith("_" + kind):
            return kind
    raise AssertionError(f"specific/{specific}.yaml: unknown kind")


def _compose(overrides, hydra=False):
    return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def _validate(cfg) -> dict:
    """Resolve every interpolation of the job config and build the typed dataclasses."""
    job = cfg.copy()
    if "hydra" in job:
        with open_dict(job):
            del job["hydra"]
    container = OmegaConf.to_container(job, resolve=True, throw_on_missing=True)
    obj = OmegaConf.to_object(job)
    assert isinstance(obj, Config)
    return container


def test_the_expected_configs_exist():
    assert {"CIFAR10", "CIFAR100", "MNIST", "FashionMNIST", "digits"} <= set(DATASETS)
    assert {"SGD", "Adam"} <= set(OPTIMIZERS)
    assert {
        "Dense", "Small_Dense", "Static", "SET", "SNFS", "RigL", "RigL_reinit", "Pruning", "Lottery",
    } <= set(MASKINGS)  # fmt: skip
    expected = {f"cifar10_wrn_22_2_{k}" for k in SPECIFIC_MASKING}
    expected |= {
        f"{fam}_{k}"
        for fam in ("cifar100_resnet50", "fmnist_lenet5", "fmnist_lenet300")
        for k in ("masking", "dense", "static", "pruning", "lottery", "masking_reinit")
    }
    assert expected <= set(SPECIFICS), expected - set(SPECIFICS)


def test_specific_files_are_global_packages():
    for name in SPECIFICS:
        first = (CONF / "specific" / f"{name}.yaml").read_text().splitlines()[0]
        assert first == "# @package _global_", name


def test_every_group_combination_composes(hydra_ctx):
    combos = list(itertools.product(DATASETS, OPTIMIZERS, MASKINGS))
    assert len(combos) >= 5 * 2 * 9
    for dataset, optimizer, masking in combos:
        ov = [f"dataset={dataset}", f"optimizer={optimizer}", f"masking={masking}"]
        cfg = _compose(ov)
        c = _validate(cfg)
        assert c["masking"]["name"] == masking, ov
        assert c["optimizer"]["name"] == optimizer, ov
        assert c["exp_name"].startswith(masking), ov


FAMILY = {
    "cifar10_wrn_22_2": ("CIFAR10", "wrn-22-2"),
    "cifar100_resnet50": ("CIFAR100", "resnet50"),
    "fmnist_lenet5": ("FashionMNIST", "lenet5"),
    "fmnist_lenet300": ("FashionMNIST", "lenet-300-100"),
}
FIXED_METHOD = {
    "static": "Static",
    "pruning": "Pruning",
    "lottery": "Lottery",
    "dense": "Dense",
    "masking_reinit": "RigL_reinit",
}


@pytest.mark.parametrize("specific", SPECIFICS)
def test_every_specific_composes(hydra_ctx, specific):
    kind = _kind(specific)
    for masking in SPECIFIC_MASKING[kind]:
        ov = [f"masking={masking}", f"+specific={specific}", "seed=1"]
        cfg = _compose(ov, hydra=True)
        c = _validate(cfg)
        assert c["masking"]["name"] == masking
        run_dir = cfg.hydra.run.dir
        assert (
            run_dir
            == f"outputs/{c['dataset']['name']}/{c['exp_name']}/{c['masking']['density']}/+specific={specific},seed=1"
        )
    # alone, the file selects its data set and model (and its method, where it fixes one)
    c = _validate(_compose([f"+specific={specific}"]))
    fam = next(f for f in FAMILY if specific.startswith(f + "_"))
    assert (c["dataset"]["name"], c["model"]) == FAMILY[fam]
    if kind in FIXED_METHOD:
        assert c["masking"]["name"] == FIXED_METHOD[kind]


def test_command_line_wins_over_a_specific_file(hydra_ctx):
    cfg = _compose(["+specific=fmnist_lenet5_masking", "dataset=digits", "masking=SET"])
    assert (cfg.dataset.name, cfg.masking.name) == ("digits", "SET")
    cfg = _compose(
        ["+specific=cifar10_wrn_22_2_dense", "masking=Small_Dense", "masking.density=0.1"]
    )
    assert (cfg.masking.name, cfg.masking.density, cfg.masking.dense) == ("Small_Dense", 0.1, True)
    cfg = _compose(
        ["masking=RigL", "+specific=cifar10_wrn_22_2_masking", "masking.sparse_init=random"]
    )
    assert cfg.masking.sparse_init == "random" and cfg.exp_name == "RigL_Random"


def test_cifar10_reference_values(hydra_ctx):
    cfg = _compose(["masking=RigL", "+specific=cifar10_wrn_22_2_masking"])
    m, o, d = cfg.masking, cfg.optimizer, cfg.dataset
    assert (cfg.model, d.name, d.batch_size, d.validation_split) == (
        "wrn-22-2",
        "CIFAR10",
        128,
        0.1,
    )
    assert (m.density, m.sparse_init, m.prune_rate, m.interval, m.end_when) == (
        0.2, "erdos-renyi-kernel", 0.3, 100, 65918,
    )  # fmt: skip
    assert (m.apply_when, m.decay_schedule) == ("step_end", "cosine")
    assert (o.name, o.epochs, o.lr, o.momentum, o.weight_decay) == ("SGD", 250, 0.1, 0.9, 5e-4)
    assert (o.decay_frequency, o.decay_factor, o.use_nesterov) == (30000, 0.2, True)

    p = _compose(["masking=Pruning", "+specific=cifar10_wrn_22_2_pruning"]).masking
    assert (p.density, p.final_density, p.start_when, p.end_when, p.interval) == (
        1.0, 0.2, 700, 65918, 100,
    )  # fmt: skip
    assert (p.prune_mode, p.decay_schedule) == ("global-magnitude", "magnitude-prune")

    s = _compose(["masking=Static", "+specific=cifar10_wrn_22_2_static"]).masking
    assert (s.sparse_init, s.end_when) == ("erdos-renyi-kernel", -1)


def test_cifar100_reference_values(hydra_ctx):
    cfg = _compose(["masking=RigL", "+specific=cifar100_resnet50_masking"])
    o = cfg.optimizer
    assert (cfg.model, cfg.dataset.name) == ("resnet50", "CIFAR100")
    assert (o.epochs, o.lr, o.weight_decay, o.label_smoothing, o.warmup_steps) == (
        250, 0.1, 1e-4, 0.1, 1760,
    )  # fmt: skip
    assert (o.decay_frequency, o.decay_factor) == (20000, 0.2)
    assert (cfg.masking.density, cfg.masking.interval, cfg.masking.end_when) == (0.2, 100, 65918)


def test_optuna_reference_settings(hydra_ctx):
    ov = ["hydra/sweeper=optuna", "masking=RigL", "+specific=cifar10_wrn_22_2_optuna"]
    cfg = _compose([*ov, "masking.density=0.1"], hydra=True)
    sw = cfg.hydra.sweeper
    assert sw._target_.endswith("OptunaSweeper")
    assert (sw.direction, sw.n_trials, sw.sampler.seed) == ("maximize", 15, 123)
    assert sw.sampler._target_ == "optuna.samplers.TPESampler"
    assert sw.storage == "sqlite:///outputs/databases/cifar10_alpha_deltaT_multiseed.db"
    assert sw.study_name == "cifar10-alpha-deltaT-erdos-renyi-kernel-density-0.1"
    assert dict(sw.params) == {
        "masking.prune_rate": "interval(0.1,0.6)",
        "masking.interval": "range(50,1000,50)",
    }
    assert list(cfg.multi_seed) == [0, 1, 2]
    # selecting the specific alone also selects the Optuna sweeper
    rnd = _compose(["+specific=cifar10_wrn_22_2_optuna", "masking.sparse_init=random"], hydra=True)
    assert rnd.hydra.sweeper.study_name == "cifar10-alpha-deltaT-random-density-0.2"


def test_fmnist_configs_fit_the_cpu_budget(hydra_ctx):
    """Schedule values are scaled to the short run: all inside the run length."""
    steps_per_epoch = -(-54_000 // 128)  # Fashion-MNIST train split after validation_split 0.1
    for fam in ("fmnist_lenet5", "fmnist_lenet300"):
        cfg = _compose([f"+specific={fam}_masking"])
        o, m = cfg.optimizer, cfg.masking
        total = o.epochs * steps_per_epoch
        assert 4 <= o.epochs <= 8
        assert o.decay_frequency < total and m.interval < 0.75 * total
        # T_end as a fraction (75 % as RigL), so `optimizer.epochs=N` keeps it inside training
        assert m.end_when == 0.75
        p = _compose([f"+specific={fam}_pruning"]).masking
        assert 0 < p.start_when < p.end_when == 0.75
    # the `make fmnist` LeNet-5 sweep: 3 densities x 3 seeds x (8 methods + RigL_2x counted twice)
    # + Dense x 3 seeds; measured 15.6 s per epoch (training + evaluation, 2 threads, idle
    # 2-core machine) and ~2 s of set-up per job -> about 2 hours
    epochs = _compose(["+specific=fmnist_lenet5_masking"]).optimizer.epochs
    run_equivalents, jobs = 9 * (8 + 2) + 3, 9 * 9 + 3
    assert (run_equivalents * epochs * 15.6 + jobs * 2) / 3600 <= 2.15


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["masking=RigL", "dataset=CIFAR10", "+specific=cifar10_wrn_22_2_masking", "seed=0"],
            "outputs/CIFAR10/RigL_ERK/0.2/+specific=cifar10_wrn_22_2_masking,seed=0",
        ),
        (  # what `make cifar10.ERK.RigL` passes: the excluded keys leave the name unchanged
            [
                "dataset=CIFAR10",
                "optimizer=SGD",
                "masking=RigL",
                "+specific=cifar10_wrn_22_2_masking",
                "exp_name=RigL_ERK",
                "masking.density=0.2",
                "seed=0",
                "wandb.use=False",
                "device=cpu",
                "hydra/launcher=joblib",
                "hydra.launcher.n_jobs=2",
            ],
            "outputs/CIFAR10/RigL_ERK/0.2/+specific=cifar10_wrn_22_2_masking,seed=0",
        ),
        (
            ["masking=SNFS", "dataset=CIFAR100", "+specific=cifar100_resnet50_masking", "seed=0"],
            "outputs/CIFAR100/SNFS_ERK/0.2/+specific=cifar100_resnet50_masking,seed=0",
        ),
        (  # no exp_name given: the default still tells method and init apart
            ["masking=RigL", "masking.sparse_init=random", "masking.density=0.1"],
            "outputs/FashionMNIST/RigL_Random/0.1/",
        ),
    ],
)
def test_run_dir_matches_the_reference(hydra_ctx, overrides, expected):
    cfg = _compose(overrides, hydra=True)
    assert cfg.hydra.run.dir == expected
    # a multirun job lands in the same directory: <sweep.dir>/<sweep.subdir>
    sweep = f"{cfg.hydra.sweep.dir}/{cfg.hydra.sweep.subdir}"
    assert sweep.rstrip("/") == expected.rstrip("/")


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local", "submitit_slurm", "slurm"])
def test_launcher_configs_compose(hydra_ctx, launcher):
    cfg = _compose([f"hydra/launcher={launcher}", "seed=0"], hydra=True)
    launcher_cfg = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher_cfg["_target_"].startswith("hydra_plugins.")
    if launcher == "slurm":
        lc = cfg.hydra.launcher
        assert lc._target_.endswith("SlurmLauncher")
        assert lc.tasks_per_node == lc.gpus_per_node  # one DDP rank per GPU
        assert lc.timeout_min > 60
        ov = [
            "hydra/launcher=slurm",
            "hydra.launcher.gpus_per_node=4",
            "hydra.launcher.partition=gpu",
        ]
        c = _compose(ov, hydra=True)
        assert (c.hydra.launcher.tasks_per_node, c.hydra.launcher.partition) == (4, "gpu")
