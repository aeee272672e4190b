"""sparsetrain benchmarks (issue 10): `make bench` or `python benchmarks/run.py [--quick]`.

Prints and writes `benchmarks/results.md`:

1. Training overhead, MLP 784-1000-1000-10 (batch 128) and WRN-22-2 (CIFAR-10 shapes, batch 64),
   density 0.1: every variant (dense, Static, RigL, SET, SNFS, and the peer rigl-torch 0.5.2)
   has its own copy of one model and runs `--steps` training steps per round; rounds rotate
   through the variants, so dense and sparse are measured back to back in one process.
   - masked step / dense step: median step time (zero_grad + forward + backward + optimizer
     step with the controller's hooks) on ordinary steps, over the median dense step of the
     same round; the table shows the median over rounds.
   - update / dense step: RigL updates on the last step of each round (interval = steps per
     round): the optimizer-step time of that step minus the median optimizer-step time of
     the round's ordinary steps. SET and SNFS update at `end_epoch()` (one epoch = one round),
     timed directly. rigl-torch: the time of its `scheduler()` call on its update step.
2. Host syncs in an ordinary `ctl.step()` (calls to .item/.tolist/.cpu/nonzero/bool/int/float).
3. Exported sparse inference (`sparsetrain.export.to_sparse`), MLP 4096-4096-4096-10,
   batch 64, per density: dense (masked) forward vs exported forward, and their max difference.
   Plus one WRN-22-2-shaped convolution as unfold + CSR against the dense convolution.
4. CSR sparse *training* of a Linear layer (forward + backward + SGD step, `ops.csr_linear`)
   against dense, per density, and end to end on the MLP with `sparse_kernels=True`.
5. Profile (torch.profiler): where the time of a RigL update and of a masked step goes.
6. Our trainer against a plain PyTorch loop: one epoch of LeNet-5 on Fashion-MNIST (batch 128),
   `sparsetrain`'s trainer (Dense, and the default RigL job) over the loop a user would write;
   skipped with a note when the data set is not installed (it is never downloaded here).

Timing noise: the machine may be shared, so every ratio is taken within one round and the
median over rounds is reported. Options: --quick (fewer rounds, ~2.5 min), --threads N
(default 2), --only SECTION..., --out PATH.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import io
import math
import os
import platform
import statistics
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import sparsetrain
from sparsetrain.controller import CSR_MAX_DENSITY, CSR_MIN_NUMEL
from sparsetrain.export import MAX_DENSITY, masked_copy, sparse_layers, to_sparse
from sparsetrain.models import build
from sparsetrain.ops import CSRPattern, csr_linear

HERE = Path(__file__).resolve().parent
BIG = 10**9  # "never" for schedules: updates only where the benchmark asks for them
DENSITY = 0.1
SECTIONS = ("train", "syncs", "export", "sparse-train", "profile", "trainer")
TARGETS = {  # issue 10
    ("mlp", "step"): 1.03,
    ("wrn-22-2", "step"): 1.02,
    ("mlp", "update"): 0.3,
    ("wrn-22-2", "update"): 0.05,
}

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

#: the timer: wall time by default; `--clock cpu` (with --threads 1) times only the CPU time of
#: the benchmark's thread, which other processes competing for the cores do not inflate
clock = time.perf_counter


def _info(in_channels: int, size: int, classes: int = 10) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        in_channels=in_channels, image_size=(size, size), num_classes=classes
    )


MODELS = {
    "mlp": {"label": "MLP 784-1000-1000-10, batch 128", "dataset": "MNIST", "batch": 128},
    "wrn-22-2": {"label": "WRN-22-2 (CIFAR-10), batch 64", "dataset": "CIFAR10", "batch": 64},
}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def middle_half(values: list[float]) -> tuple[float, float] | None:
    """(first, third) quartile: how much the per-round ratios scatter (the machine's noise)."""
    if len(values) < 4:
        return None
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q1, q3


# --------------------------------------------------------------------------- the peer
def load_rigl_torch() -> tuple[Any, str]:
    """rigl-torch's RigLScheduler, importing it with a stand-in `torchvision` module (it only
    uses torchvision for isinstance checks on ResNet blocks); (None, reason) if unavailable."""
    if "torchvision" not in sys.modules:
        stub = types.ModuleType("torchvision")
        stub.models = types.ModuleType("torchvision.models")
        stub.models.resnet = types.ModuleType("torchvision.models.resnet")

        class _NotABlock:  # nothing is an instance of these
            pass

        stub.models.resnet.Bottleneck = stub.models.resnet.BasicBlock = _NotABlock
        sys.modules.update(
            {
                "torchvision": stub,
                "torchvision.models": stub.models,
                "torchvision.models.resnet": stub.models.resnet,
            }
        )
    try:
        module = importlib.import_module("rigl_torch.RigL")
        from importlib.metadata import version

        return module.RigLScheduler, f"rigl-torch {version('rigl-torch')}"
    except Exception as exc:  # not installed, or incompatible
        return (
            None,
            f"rigl-torch not run ({type(exc).__name__}: {exc}); `pip install --no-deps rigl-torch==0.5.2`",
        )


# --------------------------------------------------------------------------- 1. training
class Variant:
    """One training set-up with its own model copy; `round(n)` runs n timed steps."""

    def __init__(
        self, kind: str, base: nn.Module, steps: int, peer: Any = None, density: float = DENSITY
    ):
        self.kind = kind
        self.model = copy.deepcopy(base).train()
        self.opt = torch.optim.SGD(
            self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4
        )
        self.ctl = self.peer = None
        common = {"density": density, "init": "ERK", "total_steps": BIG}
        if kind == "Static":
            self.ctl = sparsetrain.sparsify(self.model, self.opt, "Static", **common)
        elif kind == "RigL":  # updates on the last step of every round
            self.ctl = sparsetrain.sparsify(self.model, self.opt, "RigL", interval=steps, **common)
        elif kind in ("SET", "SNFS"):  # update at end_epoch(); one epoch = one round
            self.ctl = sparsetrain.sparsify(
                self.model, self.opt, kind, steps_per_epoch=steps, **common
            )
        elif kind == "RigL+CSR":
            self.ctl = sparsetrain.sparsify(
                self.model, self.opt, "RigL", interval=BIG // 2, sparse_kernels=True, **common
            )
        elif kind == "rigl-torch":
            self.peer = peer(
                self.model, self.opt, dense_allocation=density, T_end=BIG, delta=steps,
                alpha=0.3, ignore_linear_layers=False,
            )  # fmt: skip
        self.step_times: list[list[float]] = []  # per round: ordinary full steps
        self.opt_times: list[list[float]] = []  # per round: optimizer step of ordinary steps
        self.update_times: list[float] = []  # per round: update cost (see module docstring)

    def round(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
        full, opt_part, update = [], [], None
        for _ in range(steps):
            t0 = clock()
            self.opt.zero_grad(set_to_none=True)
            F.cross_entropy(self.model(x), y).backward()
            t1 = clock()
            if self.peer is not None:
                do_step = self.peer()
                t2 = clock()
                if do_step:
                    self.opt.step()
                t3 = clock()
                if not do_step:
                    update = t2 - t1  # its update (the optimizer step is skipped there)
                    continue
                full.append(t3 - t0)
                opt_part.append(t3 - t1)
                continue
            n_updates = len(self.ctl.update_log) if self.ctl else 0
            self.opt.step()  # the controller rides on the optimizer's step hooks
            t2 = clock()
            if self.ctl and len(self.ctl.update_log) > n_updates:
                update = t2 - t1  # minus the ordinary optimizer step, below
                continue
            full.append(t2 - t0)
            opt_part.append(t2 - t1)
        if self.kind in ("SET", "SNFS"):
            t0 = clock()
            self.ctl.end_epoch()
            update = clock() - t0
        elif self.kind == "RigL" and update is not None:
            update -= median(opt_part)
        self.step_times.append(full)
        self.opt_times.append(opt_part)
        if update is not None:
            self.update_times.append(update)


def bench_training(
    model_name: str,
    rounds: int,
    steps: int,
    peer: Any,
    kinds: list[str],
    density: float = DENSITY,
) -> dict:
    spec = MODELS[model_name]
    torch.manual_seed(0)
    base = build(model_name, spec["dataset"])
    info = sparsetrain.models.input_spec(spec["dataset"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(spec["batch"], info.in_channels, *info.image_size, generator=g)
    y = torch.randint(0, info.num_classes, (spec["batch"],), generator=g)
    kinds = [k for k in kinds if k != "rigl-torch" or peer is not None]
    variants = [Variant(k, base, steps, peer, density) for k in kinds]
    for r in range(rounds + 1):  # round 0 warms up (allocator, oneDNN primitives)
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            v.round(x, y, steps)
        if r == 0:
            for v in variants:
                v.step_times.clear(), v.opt_times.clear(), v.update_times.clear()
    dense = variants[0]
    dense_per_round = [median(t) for t in dense.step_times]
    rows = {}
    for v in variants:
        step_ratios = [median(t) / d for t, d in zip(v.step_times, dense_per_round)]
        update_ratio = (
            median([u / d for u, d in zip(v.update_times, dense_per_round)])
            if v.update_times
            else None
        )
        rows[v.kind] = {
            "step_ms": 1e3 * median([median(t) for t in v.step_times]),
            "step_ratio": median(step_ratios),
            "step_iqr": middle_half(step_ratios),
            "update_ms": 1e3 * median(v.update_times) if v.update_times else None,
            "update_ratio": update_ratio,
        }
    return {
        "model": model_name,
        "label": spec["label"],
        "rows": rows,
        "rounds": rounds,
        "steps": steps,
    }


# --------------------------------------------------------------------------- 2. host syncs
SYNC_CALLS = ("item", "tolist", "cpu", "nonzero", "__bool__", "__int__", "__float__")


def count_host_syncs(method: str, **options: Any) -> int:
    """Calls that force a device-to-host sync during one ordinary `optimizer.step()`."""
    torch.manual_seed(0)
    # big and sparse enough that `sparse_kernels=True` puts the first layer on CSR
    net = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    ctl = sparsetrain.sparsify(
        net, opt, method, density=0.05, init="ERK", total_steps=1000, steps_per_epoch=100,
        **options,
    )  # fmt: skip
    if options.get("sparse_kernels") and not ctl._csr:
        raise RuntimeError("host-sync check: no layer runs on the CSR kernels")
    x, y = torch.randn(16, 256), torch.randint(0, 10, (16,))
    for _ in range(2):  # optimizer state exists from now on
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        ctl.step()
    opt.zero_grad()
    F.cross_entropy(net(x), y).backward()
    calls: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in SYNC_CALLS}

    def spy(name: str) -> Any:
        def wrapper(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return originals[name](self, *args, **kwargs)

        return wrapper

    try:
        for name in SYNC_CALLS:
            setattr(torch.Tensor, name, spy(name))
        ctl.step()
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
    return len(calls)


# --------------------------------------------------------------------------- 3. export
def random_masks(model: nn.Module, density: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """Exactly round(density · numel) random active weights in every Linear/Conv2d weight."""
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for name, p in sparsetrain.masks.maskable_parameters(model).items():
        keep = torch.randperm(p.numel(), generator=g)[: max(1, round(density * p.numel()))]
        mask = torch.zeros(p.numel(), dtype=torch.bool)
        mask[keep] = True
        masks[name] = mask.view(p.shape)
    return masks


def interleaved(fns: dict[str, Any], rounds: int, reps: int) -> dict[str, float]:
    """Median seconds per call of each function, measured in alternating rounds."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()
    for r in range(rounds):
        items = list(fns.items())
        for name, f in items[r % len(items) :] + items[: r % len(items)]:
            t0 = clock()
            for _ in range(reps):
                f()
            times[name].append((clock() - t0) / reps)
    return {k: median(v) for k, v in times.items()}


def _time_forward(model: nn.Module, x: torch.Tensor, rounds: int) -> float:
    return interleaved({"f": lambda: model(x)}, rounds, 3)["f"]


def bench_export(rounds: int, densities: tuple[float, ...]) -> dict:
    torch.manual_seed(0)
    model = build("mlp", _info(1, 64), hidden=(4096, 4096))  # 4096-4096-4096-10
    x = torch.randn(64, 4096, generator=torch.Generator().manual_seed(1))
    rows = []
    with torch.inference_mode():
        for d in densities:
            masks = random_masks(model, d)
            dense, sparse = masked_copy(model, masks), to_sparse(model, masks)
            want, got = dense(x), sparse(x)
            t = interleaved({"dense": lambda: dense(x), "sparse": lambda: sparse(x)}, rounds, 3)  # noqa: B023
            rows.append(
                {
                    "density": d,
                    "dense_ms": 1e3 * t["dense"],
                    "sparse_ms": 1e3 * t["sparse"],
                    "speedup": t["dense"] / t["sparse"],
                    "csr_layers": len(sparse_layers(sparse)),
                    "allclose": bool(torch.allclose(want, got, rtol=1e-4, atol=1e-5)),
                    "max_diff": float((want - got).abs().max()),
                }
            )
            # the kernel itself on every layer, whatever the default cut decided
            rows[-1]["forced_ms"] = 1e3 * _time_forward(
                to_sparse(model, masks, max_density=1.0), x, max(2, rounds // 2)
            )
        # a WRN-22-2 block-3 convolution (128 channels, 8x8, batch 64) at density 0.05
        conv_x = torch.randn(64, 128, 8, 8)
        w = torch.randn(128, 128, 3, 3) * (torch.rand(128, 128, 3, 3) < 0.05)
        w_csr = w.reshape(128, -1).to_sparse_csr()

        def unfold_csr() -> torch.Tensor:
            cols = F.unfold(conv_x, 3, padding=1).transpose(0, 1).reshape(128 * 9, -1)
            return (w_csr @ cols).reshape(128, 64, 8, 8).transpose(0, 1)

        t = interleaved(
            {"dense": lambda: F.conv2d(conv_x, w, padding=1), "csr": unfold_csr}, rounds, 3
        )
    conv = {"dense_ms": 1e3 * t["dense"], "csr_ms": 1e3 * t["csr"]}
    return {"rows": rows, "conv": conv}


# --------------------------------------------------------------------------- 4. sparse training
def _layer_steps(mask: torch.Tensor, x: torch.Tensor, grad_out: torch.Tensor) -> tuple[Any, Any]:
    """Training-step closures for one masked Linear layer: dense kernels, and CSR kernels."""
    size = mask.shape[0]
    factor = mask.view(torch.uint8)
    pattern = CSRPattern(mask)
    layers = {}
    for kind in ("dense", "csr"):
        layer = nn.Linear(size, size)
        with torch.no_grad():
            layer.weight.mul_(factor)
        layers[kind] = (layer, torch.optim.SGD(layer.parameters(), lr=0.01, momentum=0.9))

    def dense_step() -> None:
        layer, opt = layers["dense"]
        opt.zero_grad(set_to_none=True)
        F.linear(x, layer.weight, layer.bias).backward(grad_out)
        layer.weight.grad.mul_(factor)  # what the controller does
        opt.step()
        layer.weight.data.mul_(factor)

    def csr_step() -> None:
        layer, opt = layers["csr"]
        opt.zero_grad(set_to_none=True)
        csr_linear(x, layer.weight, layer.bias, pattern).backward(grad_out)
        opt.step()
        layer.weight.data.mul_(factor)

    return dense_step, csr_step


def bench_sparse_training(rounds: int, densities: tuple[float, ...], size: int = 4096) -> dict:
    """One Linear layer (size x size, batch 128): forward + backward + SGD step, dense vs CSR."""
    rows = []
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, size, generator=g, requires_grad=True)
    grad_out = torch.randn(128, size, generator=g)
    for d in densities:
        mask = random_masks(nn.Linear(size, size), d)["weight"]
        dense_step, csr_step = _layer_steps(mask, x, grad_out)
        t = interleaved({"dense": dense_step, "csr": csr_step}, rounds, 2)
        rows.append(
            {
                "density": d,
                "dense_ms": 1e3 * t["dense"],
                "csr_ms": 1e3 * t["csr"],
                "speedup": t["dense"] / t["csr"],
            }
        )
    return {"rows": rows, "size": size}


def bench_mlp_sparse_kernels(rounds: int, steps: int, densities: tuple[float, ...]) -> list[dict]:
    """MLP 784-1000-1000-10 (batch 128) RigL training steps with and without sparse_kernels."""
    out = []
    for d in densities:
        r = bench_training("mlp", rounds, steps, None, ["dense", "Static", "RigL+CSR"], d)
        out.append({"density": d, **{k: v["step_ratio"] for k, v in r["rows"].items()}})
    return out


# --------------------------------------------------------------------------- 5. profile
def profile_tables(model_name: str, rows: int = 8) -> dict[str, str]:
    """torch.profiler tables (self CPU time) of one RigL update and of one masked step."""
    from torch.profiler import profile

    spec = MODELS[model_name]
    torch.manual_seed(0)
    model = build(model_name, spec["dataset"])
    info = sparsetrain.models.input_spec(spec["dataset"])
    x = torch.randn(spec["batch"], info.in_channels, *info.image_size)
    y = torch.randint(0, info.num_classes, (spec["batch"],))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    sparsetrain.sparsify(
        model, opt, "RigL", density=DENSITY, init="ERK", total_steps=BIG, interval=4
    )
    tables = {}
    for i in range(8):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if i in (6, 7):  # step 7 is a mask update, step 8 an ordinary one
            with profile() as prof:
                opt.step()
            key = (
                "RigL update step (optimizer step + mask update)"
                if i == 7
                else "ordinary masked optimizer step"
            )
            tables[key] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
        else:
            opt.step()
    return tables


# --------------------------------------------------------------------------- 6. trainer
def _plain_epoch(splits: Any, mean: float, std: float) -> float:
    """Seconds for one epoch of the plain PyTorch loop a user would write (LeNet-5, batch 128,
    the trainer's optimizer settings), on tensors already in memory."""
    x_all = (splits.train[0].float() / 255 - mean) / std
    y_all = splits.train[1]
    torch.manual_seed(0)
    model = build("lenet5", "FashionMNIST").train()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    n = y_all.numel()
    start = time.perf_counter()
    order = torch.randperm(n)
    for i in range(0, n, 128):
        batch = order[i : i + 128]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x_all[batch]), y_all[batch]).backward()
        opt.step()
    return time.perf_counter() - start


def _trainer_epoch(masking: str, threads: int, run_dir: Path) -> float:
    """Seconds of training (up to the epoch's evaluation) in one epoch of `sparsetrain`'s
    own trainer (the default `make run` job with `masking`), read from its metrics."""
    from sparsetrain.cli.flops import compose_config
    from sparsetrain.train import runner
    from sparsetrain.train.results import read_metrics

    overrides = ["optimizer.epochs=1", "progress=false", "ckpt_interval=0"]
    cfg = compose_config([f"masking={masking}", f"dataset.max_threads={threads}", *overrides])
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        runner.run(cfg, run_dir)
    torch.set_num_threads(threads)
    evals = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "eval"]
    return evals[0]["wall_seconds"]


_FIRST_UPDATE = """
import time, torch, torch.nn.functional as F, sparsetrain
net = torch.nn.Sequential(  # two layers large enough for the team (sparsetrain.openmp)
    torch.nn.Linear(300, 300), torch.nn.ReLU(), torch.nn.Linear(300, 300), torch.nn.ReLU(),
    torch.nn.Linear(300, 10),
)
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
sparsetrain.sparsify(net, opt, "RigL", density=0.1, total_steps=10**9, interval=1)
seconds = []
for _ in range(2):
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(net(torch.randn(8, 300)), torch.randint(0, 10, (8,))).backward()
    start = time.perf_counter()
    opt.step()
    seconds.append(time.perf_counter() - start)
print(seconds[0] - seconds[1])
"""


def _first_update_seconds() -> float:
    """The one-off cost of the first mask update in a fresh process: numba loads the compiled
    kernels from its disk cache (measured in a new interpreter, this one has them loaded)."""
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", _FIRST_UPDATE], capture_output=True, text=True, check=True
    )
    return float(out.stdout.split()[-1])


def bench_trainer(rounds: int, threads: int) -> dict:
    """One epoch of LeNet-5 on Fashion-MNIST: the plain loop, then our trainer (Dense and the
    default RigL ERK 0.2), in turn, `rounds` times; the ratio is per round."""
    import tempfile

    from sparsetrain.data import dataset_info, load_splits
    from sparsetrain.errors import SparsetrainError

    os.environ.setdefault("SPARSETRAIN_OFFLINE", "1")  # a benchmark never downloads
    try:
        splits = load_splits("FashionMNIST", "datasets/FashionMNIST", 0.1, download=False)
    except SparsetrainError as exc:
        return {"skipped": f"Fashion-MNIST not found ({str(exc).splitlines()[0]})"}
    info = dataset_info("FashionMNIST")
    kernels_load = _first_update_seconds()
    with contextlib.redirect_stdout(io.StringIO()):  # and here, before the timed epochs
        exec(_FIRST_UPDATE, {})
    times: dict[str, list[float]] = {"plain loop": [], "Dense": [], "RigL": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            times["plain loop"].append(_plain_epoch(splits, info.mean[0], info.std[0]))
            for masking in ("Dense", "RigL"):
                times[masking].append(_trainer_epoch(masking, threads, Path(tmp) / f"{masking}{r}"))
    plain = times["plain loop"]
    return {
        "rounds": rounds,
        "steps": math.ceil(splits.train[1].numel() / 128),
        "kernels_load": kernels_load,
        "rows": {
            kind: {
                "seconds": median(t),
                "ratio": median(ratios := [a / b for a, b in zip(t, plain)]),
                "spread": (min(ratios), max(ratios)),
            }
            for kind, t in times.items()
        },
    }


# --------------------------------------------------------------------------- report
def fmt(value: float | None, digits: int = 3) -> str:
    return (
        "—"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


def mark(value: float | None, target: float | None) -> str:
    if value is None or target is None:
        return ""
    return " ✓" if value <= target else " ✗"


def render(results: dict, meta: dict) -> str:
    lines = [
        "# sparsetrain benchmarks",
        "",
        f"Generated by `make bench` ({'--quick' if meta['quick'] else 'full'}) on {meta['when']}: "
        f"torch {torch.__version__}, {meta['threads']} CPU thread(s), {meta['clock']}, {meta['cpu']}, "
        f"load average at start {meta['load']}. {meta['peer']}.",
        "",
        *(
            [
                f"Other jobs were running (load average >= {os.cpu_count()} cores): wall-clock times "
                "with more than one thread then measure the contention more than the code; "
                "`--threads 1 --clock cpu` gives stable ratios on a shared machine.",
                "",
            ]
            if meta["clock"] == "wall time" and meta["busy"]
            else []
        ),
        "Ratios are medians over rounds of per-round ratios (dense and sparse measured back to back",
        "in the same process). Density 0.1 (ERK for ours; rigl-torch: uniform, first layer dense,",
        "its only distribution). ✓/✗: issue-10 target. `middle half of rounds`: first to third",
        "quartile of the per-round step ratios, the spread the machine's noise puts on the median.",
        "",
    ]
    for r in results.get("train", []):
        lines += [
            f"## Training: {r['label']}",
            "",
            f"{r['rounds']} rounds x {r['steps']} steps per variant.",
            "",
            "| variant | step (ms) | masked step / dense step | middle half of rounds | update (ms) | update / dense step |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for kind, row in r["rows"].items():
            step_target = TARGETS.get((r["model"], "step")) if kind in ("Static", "RigL") else None
            upd_target = (
                TARGETS.get((r["model"], "update")) if kind in ("RigL", "SET", "SNFS") else None
            )
            iqr = row["step_iqr"] if kind != "dense" else None
            spread = "—" if iqr is None else f"{iqr[0]:.3f}–{iqr[1]:.3f}"
            lines.append(
                f"| {kind} | {fmt(row['step_ms'], 1)} | {fmt(row['step_ratio'])}{mark(row['step_ratio'], step_target)} "
                f"| {spread} | {fmt(row['update_ms'], 1)} | {fmt(row['update_ratio'])}{mark(row['update_ratio'], upd_target)} |"
            )
        lines.append("")
    if "syncs" in results:
        lines += [
            "## Host syncs in an ordinary step",
            "",
            "Calls to `.item/.tolist/.cpu/nonzero/__bool__/__int__/__float__` during one",
            "`optimizer.step()` that is not a mask update (target 0):",
            "",
            "| method | calls |",
            "|---|---:|",
            *[f"| {m} | {n}{' ✓' if n == 0 else ' ✗'} |" for m, n in results["syncs"].items()],
            "",
        ]
    if "export" in results:
        e = results["export"]
        lines += [
            "## Exported sparse inference: MLP 4096-4096-4096-10, batch 64",
            "",
            "`sparsetrain.export.to_sparse(model, masks)` (default cut: CSR for Linear layers at",
            f"density <= {MAX_DENSITY}) against the masked dense model. `CSR everywhere`: every layer forced",
            "to CSR, to show where the kernel stops paying. Target: >= 3x at density 0.05.",
            "",
            "| density | dense (ms) | exported (ms) | speedup | CSR layers | CSR everywhere (ms) | allclose (max abs diff) |",
            "|---:|---:|---:|---:|---:|---:|---|",
        ]
        for row in e["rows"]:
            target = (
                " ✓"
                if row["density"] == 0.05 and row["speedup"] >= 3
                else (" ✗" if row["density"] == 0.05 else "")
            )
            lines.append(
                f"| {row['density']} | {row['dense_ms']:.2f} | {row['sparse_ms']:.2f} | {row['speedup']:.2f}x{target} "
                f"| {row['csr_layers']}/3 | {row['forced_ms']:.2f} | {row['allclose']} ({row['max_diff']:.1e}) |"
            )
        c = e["conv"]
        lines += [
            "",
            "Convolutions stay dense: a WRN-22-2 block-3 conv (128→128, 3x3, 8x8, batch 64) at density",
            f"0.05 takes {c['dense_ms']:.2f} ms dense and {c['csr_ms']:.2f} ms as unfold + CSR"
            f" ({c['dense_ms'] / c['csr_ms']:.2f}x); the unfold alone costs more than the dense conv.",
            "",
        ]
    if "sparse-train" in results:
        s = results["sparse-train"]
        lines += [
            f"## CSR sparse training: one Linear {s['size']}x{s['size']}, batch 128",
            "",
            "Forward + backward + SGD step; CSR = `sparsetrain.ops.csr_linear` (CSR forward, CSR",
            "input gradient, weight gradient only at active entries via `sampled_addmm`, scattered",
            "into the dense gradient the optimizer updates).",
            "",
            "| density | dense (ms) | CSR (ms) | speedup |",
            "|---:|---:|---:|---:|",
            *[
                f"| {r['density']} | {r['dense_ms']:.1f} | {r['csr_ms']:.1f} | {r['speedup']:.2f}x |"
                for r in s["rows"]
            ],
            "",
        ]
        if s.get("mlp"):
            lines += [
                "End to end, MLP 784-1000-1000-10 batch 128, RigL (ERK) with `sparse_kernels=True`",
                f"(Linear layers at density <= {CSR_MAX_DENSITY} with >= {CSR_MIN_NUMEL} weights train on CSR), step / dense step:",
                "",
                "| density | Static (dense kernels) | RigL + sparse_kernels |",
                "|---:|---:|---:|",
                *[
                    f"| {r['density']} | {fmt(r.get('Static'))} | {fmt(r.get('RigL+CSR'))} |"
                    for r in s["mlp"]
                ],
                "",
            ]
    if "trainer" in results:
        t = results["trainer"]
        lines += [
            "## Our trainer against a plain PyTorch loop: LeNet-5, Fashion-MNIST, batch 128",
            "",
        ]
        if "skipped" in t:
            lines += [f"Skipped: {t['skipped']}.", ""]
        else:
            lines += [
                f"One epoch ({t['steps']} steps) of training, evaluation excluded, wall time, {t['rounds']} rounds;",
                "`sparsetrain`'s trainer (the `make run` job, progress bar off) against a plain loop",
                "over tensors in memory with the same model and optimizer settings. Target: <= 1.0",
                "for the Dense trainer (nothing but the training itself costs time). Once per",
                "process, the first mask update also loads the compiled kernels from numba's cache:",
                f"{t['kernels_load']:.2f} s (measured in a fresh interpreter; not in the epochs above).",
                "",
                "| loop | epoch (s) | / plain loop | lowest–highest round |",
                "|---|---:|---:|---:|",
                *[
                    f"| {'plain loop' if k == 'plain loop' else f'trainer, {k}'} | {row['seconds']:.2f} "
                    f"| {row['ratio']:.3f} | {row['spread'][0]:.3f}–{row['spread'][1]:.3f} |"
                    for k, row in t["rows"].items()
                ],
                "",
            ]
    if "profile" in results:
        lines += ["## Profile (torch.profiler, self CPU time)", ""]
        for model_name, tables in results["profile"].items():
            for title, table in tables.items():
                lines += [
                    f"{MODELS[model_name]['label']}, {title}:",
                    "",
                    "```",
                    table.rstrip(),
                    "```",
                    "",
                ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (about 2.5 minutes)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time (default), or this thread's CPU time (needs --threads 1; for a "
        "machine shared with other jobs)",
    )
    parser.add_argument("--out", default=str(HERE / "results.md"), help="markdown output file")
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread: use it with --threads 1")
    global clock
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    sections = args.only or list(SECTIONS)
    q = args.quick
    peer, peer_note = load_rigl_torch()
    meta = {
        "quick": q,
        "threads": args.threads,
        "clock": "thread CPU time" if args.clock == "cpu" else "wall time",
        "cpu": platform.processor() or platform.machine(),
        "load": " ".join(f"{v:.1f}" for v in os.getloadavg()),
        # at the start: by the end the benchmark's own threads make up the load
        "busy": os.getloadavg()[0] >= (os.cpu_count() or 1),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "peer": peer_note if peer is None else f"Peer: {peer_note}",
    }
    results: dict[str, Any] = {}
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    kinds = ["dense", "Static", "RigL", "SET", "SNFS", "rigl-torch"]
    if "train" in sections:
        results["train"] = []
        plan = (("mlp", 5 if q else 60, 8), ("wrn-22-2", 2 if q else 9, 4))
        for name, rounds, steps in [p for p in plan if p[0] in args.models]:
            log(f"training overhead: {name}")
            results["train"].append(bench_training(name, rounds, steps, peer, kinds))
    if "syncs" in sections:
        log("host syncs")
        results["syncs"] = {m: count_host_syncs(m) for m in ("Static", "RigL", "SET", "SNFS")}
        results["syncs"]["RigL (sparse_kernels)"] = count_host_syncs("RigL", sparse_kernels=True)
    if "export" in sections:
        log("export")
        results["export"] = bench_export(3 if q else 7, (0.5, 0.2, 0.1, 0.05, 0.02))
    if "sparse-train" in sections:
        log("CSR sparse training")
        results["sparse-train"] = bench_sparse_training(2 if q else 5, (0.2, 0.1, 0.05, 0.02))
        results["sparse-train"]["mlp"] = bench_mlp_sparse_kernels(3 if q else 8, 8, (0.1, 0.05))
    if "profile" in sections:
        log("profile")
        results["profile"] = {name: profile_tables(name) for name in args.models}
    if "trainer" in sections:
        log("trainer against a plain loop")
        results["trainer"] = bench_trainer(1 if q else 3, args.threads)
    text = render(results, meta)
    print(text)
    with contextlib.suppress(OSError):
        Path(args.out).write_text(text)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
