"""The experiment make targets (mk/experiments.mk): `make -n` prints the reference's commands,
source runs of Lottery / RigL_reinit are found where Hydra writes them, `make help` lists them."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from hydra import compose

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A copy of the Makefile and mk/*.mk in an empty directory: no outputs/ from real runs."""
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    (tmp_path / "mk").mkdir()
    for mk in (REPO / "mk").glob("*.mk"):
        shutil.copy(mk, tmp_path / "mk" / mk.name)
    return tmp_path


def make(workdir: Path, *args: str, dry: bool = True, check: bool = True):
    cmd = ["make", "--no-print-directory", *(["-n"] if dry else []), *args]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def commands(output: str) -> list[list[str]]:
    """The `sparsetrain ...` command lines of a dry run, as argument lists."""
    return [shlex.split(line) for line in output.splitlines() if line.startswith("sparsetrain ")]


def overrides(cmd: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in cmd[1:] if "=" in a)


def ran(output: str) -> list[dict[str, str]]:
    return [overrides(c) for c in commands(output)]


def find(runs: list[dict[str, str]], **expected: str) -> dict[str, str]:
    """The one command whose overrides include all of `expected` (keys: '.' written as '__')."""
    want = {k.replace("__", "."): v for k, v in expected.items()}
    hits = [r for r in runs if all(r.get(k) == v for k, v in want.items())]
    assert len(hits) == 1, (want, runs)
    return hits[0]


def test_help_lists_the_experiment_targets(workdir):
    out = make(workdir, "help", dry=False).stdout
    for target in [
        "cifar10.<Init>.<Method>", "cifar10.Static.<Init>", "cifar10.2x.<Init>.<M>",
        "cifar10.Dense", "cifar10.Small_Dense", "cifar10.Pruning", "cifar10.Lottery", "cifar10 ",
        "cifar100.<Init>.<Method>", "cifar100.Dense", "cifar100 ",
        "cifar10_lr_grid", "cifar10_ERK_alpha_deltaT_optuna", "cifar10_Random_alpha_deltaT_optuna",
        "cifar10_tune", "fmnist.<Init>.<Method>", "fmnist.Dense", "fmnist ", "fmnist_tune",
    ]:  # fmt: skip
        assert target in out, target


def test_reference_single_target(workdir):
    (cmd,) = commands(make(workdir, "cifar10.ERK.RigL").stdout)
    assert cmd[0] == "sparsetrain" and cmd[-1] == "-m"
    assert overrides(cmd) == {
        "dataset": "CIFAR10",
        "optimizer": "SGD",
        "masking": "RigL",
        "+specific": "cifar10_wrn_22_2_masking",
        "exp_name": "RigL_ERK",
        "masking.density": "0.2",
        "seed": "0",
        "wandb.use": "False",
    }


def test_make_n_cifar10_prints_the_full_reference_sweep(workdir):
    out = make(workdir, "cifar10", "DENSITY=0.05,0.1").stdout
    runs = ran(out)
    d = "0.05,0.1"
    spec = "cifar10_wrn_22_2_masking"
    for m in ("RigL", "SNFS", "SET"):
        find(runs, masking=m, exp_name=f"{m}_ERK", masking__density=d, **{"+specific": spec})
        r = find(runs, masking=m, exp_name=f"{m}_Random", masking__density=d)
        assert r["masking.sparse_init"] == "random"
        for init in ("ERK", "Random"):
            r = find(runs, masking=m, exp_name=f"{m}_2x_{init}", masking__density=d)
            assert r["optimizer.training_multiplier"] == "2"
    r = find(runs, masking="RigL", exp_name="RigL_3x_Random")
    assert (r["optimizer.training_multiplier"], r["masking.sparse_init"]) == ("3", "random")
    r = find(runs, masking="Pruning", exp_name="Pruning")
    assert r["masking.final_density"] == d and r["optimizer.warmup_steps"] == "3500"
    assert r["+specific"] == "cifar10_wrn_22_2_pruning"
    find(runs, masking="Lottery", exp_name="Lottery", masking__density=d)
    find(runs, masking="Small_Dense", masking__density=d, **{"+specific": "cifar10_wrn_22_2_dense"})
    find(runs, masking="Static", exp_name="Static_ERK", **{"+specific": "cifar10_wrn_22_2_static"})
    r = find(runs, masking="Static", exp_name="Static_Random")
    assert r["masking.sparse_init"] == "random"
    # ours beside the reference's
    find(runs, masking="Dense", exp_name="Dense")
    find(runs, masking="RigL_reinit", exp_name="RigL_reinit_ERK")
    assert all(r["dataset"] == "CIFAR10" and r["seed"] == "0" for r in runs)
    # Pruning runs before Lottery, RigL before RigL_reinit; no source run is repeated
    names = [r["exp_name"] for r in runs]
    assert names.index("Pruning") < names.index("Lottery")
    assert names.index("RigL_ERK") < names.index("RigL_reinit_ERK")
    assert len(names) == len(set(names)) == 22
    assert "make " not in out


def test_cifar100_targets(workdir):
    runs = ran(make(workdir, "cifar100", "DENSITY=0.1,0.2", "SEED=0,1").stdout)
    assert all(r["dataset"] == "CIFAR100" and r["seed"] == "0,1" for r in runs)
    find(runs, exp_name="SNFS_ERK", **{"+specific": "cifar100_resnet50_masking"})
    r = find(runs, exp_name="Pruning", **{"+specific": "cifar100_resnet50_pruning"})
    assert (
        "optimizer.warmup_steps" not in r
    )  # the reference's CIFAR-100 Pruning has no extra warmup
    find(runs, exp_name="Lottery", **{"+specific": "cifar100_resnet50_lottery"})
    find(runs, exp_name="RigL_2x_ERK")


def test_reference_spellings_are_aliases(workdir):
    same = [
        ("cifar10.2x.ERK.RigL", "cifar10.ERK.RigL_2x"),
        ("cifar10.2x.Random.SNFS", "cifar10.Random.SNFS_2x"),
        ("cifar10.3x.Random.RigL", "cifar10.Random.RigL_3x"),
        ("cifar10.Static.Random", "cifar10.Random.Static"),
        ("cifar10.Small-Dense", "cifar10.Small_Dense"),
        ("cifar100.Static.ERK", "cifar100.ERK.Static"),
    ]
    for alias, canonical in same:
        a, b = make(workdir, alias).stdout, make(workdir, canonical).stdout
        assert commands(a) == commands(b) and len(commands(a)) == 1, alias


def test_variables(workdir):
    out = make(
        workdir, "fmnist.ERK.SET", "N_JOBS=2", "USE_WANDB=True", "DEVICE=cpu", "HYDRA_FLAGS=",
        "ARGS=optimizer.epochs=1", "SEED=0,1",
    ).stdout  # fmt: skip
    (cmd,) = commands(out)
    r = overrides(cmd)
    assert (r["hydra/launcher"], r["hydra.launcher.n_jobs"]) == ("joblib", "2")
    assert (r["wandb.use"], r["device"], r["optimizer.epochs"]) == ("True", "cpu", "1")
    assert r["seed"] == "0,1" and "-m" not in cmd
    (cmd,) = commands(make(workdir, "fmnist.ERK.RigL", "FMNIST_MODEL=lenet300").stdout)
    assert overrides(cmd)["+specific"] == "fmnist_lenet300_masking"


def test_fmnist_sweep(workdir):
    out = make(workdir, "fmnist", "DENSITY=0.05,0.1,0.2", "SEED=0,1,2").stdout
    runs = ran(out)
    assert [r["exp_name"] for r in runs] == [
        "Dense", "Small_Dense", "Static_ERK", "SET_ERK", "SNFS_ERK", "RigL_Random", "RigL_ERK",
        "RigL_2x_ERK", "Pruning", "Lottery",
    ]  # fmt: skip
    for r in runs:
        assert r["dataset"] == "FashionMNIST" and r["seed"] == "0,1,2"
        assert r["+specific"].startswith("fmnist_lenet5_")
        assert r.get("masking.density", r.get("masking.final_density", "0.05,0.1,0.2")) == (
            "0.05,0.1,0.2"
        )
    assert "-m" in commands(out)[0]


def test_lr_grid(workdir):
    runs = ran(make(workdir, "cifar10_lr_grid").stdout)
    assert len(runs) == 8
    pairs = [("0.3", "100"), ("0.4", "200"), ("0.4", "500"), ("0.5", "750")]
    for init in ("ERK", "Random"):
        grid = [r for r in runs if r["exp_name"] == f"RigL_{init}_grid_lr"]
        assert [(r["masking.prune_rate"], r["masking.interval"]) for r in grid] == pairs
        assert all(r["optimizer.lr"] == "0.1,0.05,0.01,0.005" for r in grid)
        assert all(r["+specific"] == "cifar10_wrn_22_2_grid_lr" for r in grid)
        assert all(("masking.sparse_init" in r) == (init == "Random") for r in grid)


def test_optuna_targets_run_one_study_per_density(workdir):
    out = make(workdir, "cifar10_tune", "DENSITY=0.05,0.1").stdout
    assert "mkdir -p outputs/databases" in out
    studies = [c for c in commands(out) if "hydra/sweeper=optuna" in c]
    assert len(studies) == 4
    for cmd in studies:
        r = overrides(cmd)
        assert r["masking.density"] in ("0.05", "0.1")
        assert r["+specific"] == "cifar10_wrn_22_2_optuna" and r["multi_seed"] == "[0,1,2]"
        assert r["masking.prune_rate"] == "interval(0.1,0.6)"
        assert r["masking.interval"] == "range(50,1000,50)"
        assert r["exp_name"] in ("RigL_ERK_optuna_multiseed", "RigL_Random_optuna_multiseed")
        assert cmd[-1] == "-m"


# -- source runs: Lottery <- Pruning, RigL_reinit <- RigL ----------------------------------------


def test_lottery_runs_its_missing_source_first(workdir):
    out = make(workdir, "fmnist.Lottery", "DENSITY=0.1,0.2", "SEED=1").stdout
    assert "make --no-print-directory fmnist.Pruning DENSITY=0.1,0.2 SEED=1" in out
    names = [r["exp_name"] for r in ran(out)]
    assert names == ["Pruning", "Lottery"]


def test_lottery_stops_with_the_exact_command(workdir):
    args = ("DENSITY=0.1", "SEED=1", "AUTO_SOURCE=0", "SPARSETRAIN=true")
    proc = make(workdir, "fmnist.Lottery", *args, dry=False, check=False)
    assert proc.returncode != 0
    assert "make fmnist.Pruning DENSITY=0.1 SEED=1" in proc.stderr


def _compose_cmd(cmd: list[str]):
    args = [a for a in cmd[1:] if a != "-m"]
    return compose("config", overrides=args, return_hydra_config=True)


@pytest.mark.parametrize(
    ("dependent", "source"),
    [
        ("cifar10.Lottery", "cifar10.Pruning"),
        ("cifar100.Lottery", "cifar100.Pruning"),
        ("fmnist.Lottery", "fmnist.Pruning"),
        ("cifar10.ERK.RigL_reinit", "cifar10.ERK.RigL"),
        ("fmnist.Random.RigL_reinit", "fmnist.Random.RigL"),
    ],
)
def test_source_run_dir_is_where_the_dependent_looks(workdir, hydra_ctx, dependent, source):
    """make's checkpoint check, the source's Hydra run dir and the dependent's mask path agree."""
    args = ("DENSITY=0.05", "SEED=2")
    (src_cmd,) = commands(make(workdir, source, *args).stdout)
    src_dir = _compose_cmd(src_cmd).hydra.run.dir
    dep_cmd = commands(make(workdir, dependent, *args).stdout)[-1]
    mask_path = _compose_cmd(dep_cmd).masking.lottery_mask_path
    assert mask_path == f"{src_dir}/ckpts/last.pt"

    # once the source checkpoint exists, the dependent runs alone (ours: last.pt) ...
    ckpt = workdir / mask_path
    ckpt.parent.mkdir(parents=True)
    ckpt.touch()
    out = make(workdir, dependent, *args).stdout
    assert len(commands(out)) == 1 and "make " not in out
    # ... and a reference checkpoint name (epoch_<N>.pth) counts as well
    ckpt.rename(ckpt.with_name("epoch_250.pth"))
    proc = make(workdir, dependent, *args, "AUTO_SOURCE=0", "SPARSETRAIN=true", dry=False)
    assert "missing source" not in proc.stderr
