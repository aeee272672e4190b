"""Generate the configuration reference (Markdown) from the typed schemas and the YAML groups.

    python docs/gen_config_reference.py            # print it
    (mkdocs runs it at build time through docs/hooks.py, so the page cannot go stale)

What comes from the code, at build time:
- every key, its type and its schema default: the dataclasses of `sparsetrain.config`
  (`Config`, `DatasetConfig`, `OptimizerConfig`, `MaskingConfig`, `WandbConfig`);
- the "(ours)" marks and inline notes: the comments beside each field in `config.py`;
- the valid choices of name-like keys: the registries (`sparsetrain.algorithms.METHODS`,
  `sparsetrain.distributions.INITS`, `sparsetrain.models`, `sparsetrain.data`) and the
  controller's option tuples;
- every option of every config group and its values: the YAML files under `sparsetrain/conf/`.
The only hand-written part is the one-line meaning of each key below (`MEANING`); a key
without one is listed anyway, with its source comment, and reported by `undocumented_keys()`.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import tokenize
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

import sparsetrain
from sparsetrain import config as config_module

CONF_DIR = Path(sparsetrain.__file__).parent / "conf"

#: (section title, dataclass, key prefix, config group directory or None)
SECTIONS: tuple[tuple[str, type, str, str | None], ...] = (
    ("Top level", config_module.Config, "", None),
    ("dataset", config_module.DatasetConfig, "dataset.", "dataset"),
    ("optimizer", config_module.OptimizerConfig, "optimizer.", "optimizer"),
    ("masking", config_module.MaskingConfig, "masking.", "masking"),
    ("wandb", config_module.WandbConfig, "wandb.", None),
)

#: one line of meaning per key (the reference system's keys keep the reference's meaning)
MEANING: dict[str, str] = {
    # top level
    "exp_name": "Experiment name; part of the run directory. Default: method and init, e.g. "
    "`RigL_ERK` (dense-start methods: the method name).",
    "seed": "Seed of everything: weights, data order, masks.",
    "multi_seed": "Run these seeds one after another in one job (each in `seed=<s>/`); the job "
    "returns the mean validation accuracy (what the Optuna sweeper maximises).",
    "model": "Model to build (`sparsetrain.models`).",
    "width": "Channel / hidden-width multiplier of the model.",
    "device": "`auto` (CUDA if available, else CPU), `cpu`, `cuda`, `cuda:1`, ...",
    "sync_bn": "Under DDP, convert BatchNorm to SyncBatchNorm (statistics over the global "
    "batch); GPUs only (PyTorch's SyncBatchNorm does not run on CPU).",
    "log_interval": "Log training loss/accuracy to `metrics.jsonl` every N optimizer steps.",
    "ckpt_dir": "Checkpoint directory inside the run directory (`last.pt`, `epoch_<N>.pth`).",
    "ckpt_interval": "Save a checkpoint every N epochs (default: at the end).",
    "ckpt_every_steps": "Also save `last.pt` every N optimizer steps (0 = off).",
    "keep_last_ckpts": "How many `epoch_<N>.pth` checkpoints to keep (`last.pt` is always kept).",
    "val_interval": "Evaluate on the validation and test sets every N epochs.",
    "resume": "Continue from `<ckpt_dir>/last.pt` when it exists; a finished run is only "
    "evaluated and summarised.",
    "on_nonfinite_loss": "NaN/inf loss: `stop` (one-line error naming the step, last good "
    "checkpoint kept) or `skip` the batch.",
    "progress": "Show the rich progress bar.",
    # dataset
    "dataset.name": "Data set (`sparsetrain.data`).",
    "dataset.root": "Directory searched first for the data files (then `$SPARSETRAIN_DATA`, then "
    "system locations such as `/usr/share/datasets/fashion-mnist`); downloads land here.",
    "dataset.batch_size": "Global training batch size per optimizer step (split over ranks and "
    "accumulation micro-batches).",
    "dataset.test_batch_size": "Evaluation batch size.",
    "dataset.max_threads": "CPU threads torch may use (`torch.set_num_threads`).",
    "dataset.validation_split": "Fraction of the training set held out (seeded) for validation.",
    "dataset.fixed_shuffle": "Reference option: the same batch order every epoch.",
    "dataset.augment": "Random crop (4-pixel padding) + horizontal flip where the data set "
    "defines it (CIFAR); none for MNIST-like data.",
    # optimizer
    "optimizer.name": "`SGD` or `Adam`.",
    "optimizer.epochs": "Training epochs (× `training_multiplier`).",
    "optimizer.lr": "Peak learning rate.",
    "optimizer.momentum": "SGD momentum.",
    "optimizer.weight_decay": "L2 weight decay.",
    "optimizer.label_smoothing": "Label smoothing of the cross-entropy loss.",
    "optimizer.decay_frequency": "Step schedule: multiply the LR by `decay_factor` every this "
    "many optimizer steps (× `training_multiplier`).",
    "optimizer.decay_factor": "Step schedule factor.",
    "optimizer.warmup_steps": "Linear LR warm-up over the first N optimizer steps.",
    "optimizer.use_nesterov": "Nesterov momentum (SGD).",
    "optimizer.training_multiplier": "k: train k× longer — epochs, `decay_frequency` and an "
    "absolute `masking.end_when` are multiplied by k (RigL_2x: k = 2). FLOPs scale by k.",
    "optimizer.lr_schedule": "`step` (the reference's `decay_frequency`/`decay_factor`) or "
    "`cosine`.",
    "optimizer.gradient_accumulation": "Micro-batches per optimizer step; all step counts "
    "(`interval`, `end_when`, LR schedule, FLOPs) are in optimizer steps.",
    # masking
    "masking.name": "Method (`sparsetrain.algorithms.METHODS`).",
    "masking.density": "Fraction of the masked weights (Conv2d + Linear weights) that are "
    "active, in (0, 1]. Pruning: the starting density (1.0).",
    "masking.sparse_init": "Layer-wise density distribution, or `lottery-ticket` (masks from "
    "a previous run's checkpoint).",
    "masking.dense_gradients": "Keep gradients dense every step (SNFS: momentum of inactive "
    "weights is its grow score); otherwise gradients are masked before the optimizer step.",
    "masking.growth_mode": "Grow score: `absolute-gradient` (RigL), `momentum` (SNFS), "
    "`random` (SET), `none` (static mask).",
    "masking.prune_mode": "Accepted for compatibility: drop-and-grow methods always drop "
    "per layer by magnitude, Pruning always prunes by global magnitude.",
    "masking.redistribution_mode": "`momentum` (SNFS): each layer's share of the regrowth ∝ "
    "mean |momentum| of its active weights; `none`: every layer regrows what it dropped.",
    "masking.dense": "Reference flag for the dense methods (Dense, Small_Dense).",
    "masking.prune_rate": "α: fraction of each layer's active weights dropped and regrown at "
    "the first update (then decayed by `decay_schedule`).",
    "masking.decay_schedule": "How α_t decays: `cosine`, `linear`, `constant`; Pruning: "
    "`magnitude-prune` (the Zhu & Gupta cubic).",
    "masking.apply_when": "`step_end`: update every `interval` optimizer steps; `epoch_end`: "
    "every `interval` epochs.",
    "masking.start_when": "First tick (step or epoch, per `apply_when`) that may update.",
    "masking.end_when": "No updates from this tick on (T_end). A float in (0, 1) is a fraction "
    "of training; -1 = never update; otherwise an absolute count of steps/epochs.",
    "masking.interval": "ΔT: ticks between mask updates (Pruning: between pruning steps).",
    "masking.final_density": "Pruning: the density reached at `end_when`.",
    "masking.init_exp_name": "Lottery / RigL_reinit: `exp_name` of the source run.",
    "masking.override_dir": "Lottery / RigL_reinit: override-dirname of the source run.",
    "masking.lottery_mask_path": "Checkpoint (or run directory) whose final masks are loaded "
    "(Lottery, RigL_reinit); built from the two keys above by default.",
    "masking.print_FLOPs": "Reference flag; FLOPs are always accounted and written to "
    "`summary.json`.",
    "masking.sparse_kernels": "Train Linear layers at density <= 0.05 (and >= 65,536 weights) "
    "on `torch.sparse` CSR kernels, forward and backward (see Performance).",
    "masking.scale_init": "Sparsity-aware init: multiply each unit's initial weights by "
    "sqrt(dense fan-in / active fan-in), so a sparse layer starts with the output variance its "
    "dense initialiser intended (Evci et al. 2022). Not applied to Lottery (exact rewind).",
    # wandb
    "wandb.use": "Log to Weights & Biases too (`metrics.jsonl` is always written). Without a "
    "key or network it logs offline and says so.",
    "wandb.api_key": "File holding the API key (or set `WANDB_API_KEY`).",
    "wandb.entity": "W&B entity (team or user).",
    "wandb.project": "W&B project.",
    "wandb.name": "W&B run name.",
}


def _names(get: Callable[[], Iterable[str]]) -> Callable[[], list[str]]:
    def choices() -> list[str]:
        try:
            return list(get())
        except Exception:  # a registry that cannot load: list nothing rather than fail the build
            return []

    return choices


def _inits() -> list[str]:
    from sparsetrain.distributions import INITS, LOTTERY_INITS

    return [*INITS.names(with_aliases=True), *LOTTERY_INITS]


def _attr(module: str, name: str) -> Callable[[], Iterable[str]]:
    def get() -> Iterable[str]:
        import importlib

        return getattr(importlib.import_module(module), name)

    return get


def _call(module: str, name: str) -> Callable[[], Iterable[str]]:
    def get() -> Iterable[str]:
        import importlib

        return getattr(importlib.import_module(module), name)()

    return get


#: key -> valid values, read from the code at build time
CHOICES: dict[str, Callable[[], list[str]]] = {
    "model": _names(_call("sparsetrain.models", "names")),
    "dataset.name": _names(_call("sparsetrain.data", "names")),
    "masking.name": _names(lambda: _attr("sparsetrain.algorithms", "METHODS")().names()),
    "masking.sparse_init": _names(_inits),
    "masking.growth_mode": _names(_attr("sparsetrain.controller", "GROWTH_MODES")),
    "masking.prune_mode": _names(_attr("sparsetrain.controller", "PRUNE_MODES")),
    "masking.redistribution_mode": _names(_attr("sparsetrain.controller", "REDISTRIBUTION_MODES")),
    "masking.apply_when": _names(_attr("sparsetrain.controller", "APPLY_WHEN")),
    "masking.decay_schedule": _names(_attr("sparsetrain.schedules", "DECAY_SCHEDULES")),
    "optimizer.lr_schedule": _names(_attr("sparsetrain.train.optim", "LR_SCHEDULES")),
    "on_nonfinite_loss": _names(_attr("sparsetrain.train.runner", "NONFINITE_POLICIES")),
}


# --------------------------------------------------------------------------- reading the code
def field_comments(cls: type) -> dict[str, str]:
    """{field name: the comment(s) written beside it in the class body}."""
    source_file = Path(config_module.__file__)
    source = source_file.read_text(encoding="utf-8")
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    tree = ast.parse(source)
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    end = stmt.end_lineno or stmt.lineno
                    text = " ".join(
                        comments[n] for n in range(stmt.lineno, end + 1) if n in comments
                    )
                    # drop type-checker pragmas
                    text = " ".join(w for w in text.split("type: ignore")[0].split()).strip()
                    if text:
                        found[stmt.target.id] = text
    return found


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "???"


def _fmt(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return "*required*" if value == "???" else f"`{value}`"
    if isinstance(value, list | tuple):
        return f"`{list(value)}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _type(f: dataclasses.Field) -> str:
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return f"`{t}`"


def _load_group(group: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        data.pop("defaults", None)
        out[path.stem] = data
    return out


def _first_comment(path: Path) -> str:
    """The file's leading comment block, joined into one line."""
    parts: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if not s.startswith("#"):
            if parts or s:
                break
            continue
        if "@package" not in s:
            parts.append(s.lstrip("#").strip())
    return " ".join(p for p in parts if p)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


# --------------------------------------------------------------------------- rendering
def undocumented_keys() -> list[str]:
    """Schema keys that have no entry in `MEANING` (listed on the page anyway)."""
    missing = []
    for _, cls, prefix, _ in SECTIONS:
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(_default(f)):
                continue
            if f"{prefix}{f.name}" not in MEANING:
                missing.append(f"{prefix}{f.name}")
    return missing


def section_table(cls: type, prefix: str) -> list[str]:
    comments = field_comments(cls)
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        default = _default(f)
        if dataclasses.is_dataclass(default):
            continue  # a nested group: its own section
        key = f"{prefix}{f.name}"
        note = comments.get(f.name, "")
        ours = "(ours)" in note
        note = note.replace("(ours)", "").strip()
        meaning = MEANING.get(key) or note  # the source comment when no meaning is written
        choices = CHOICES[key]() if key in CHOICES else []
        if choices:
            meaning += " Choices: " + ", ".join(f"`{c}`" for c in choices) + "."
        name = f"`{key}`" + (" *(ours)*" if ours else "")
        lines.append(
            f"| {name} | {_cell(_type(f))} | {_cell(_fmt(default))} | {_cell(meaning.strip())} |"
        )
    return lines


def group_matrix(group: str, prefix: str) -> list[str]:
    options = _load_group(group)
    if not options:
        return []
    keys: list[str] = []
    for data in options.values():
        keys += [k for k in data if k not in keys]
    head = "| key | " + " | ".join(f"`{o}`" for o in options) + " |"
    lines = [
        f"Options of the `{group}` group (`{group}=<option>`; files `sparsetrain/conf/{group}/`). "
        "Blank: the schema default above.",
        "",
        head,
        "|---|" + "---|" * len(options),
    ]
    for key in keys:
        cells = [_cell(_fmt(data[key])) if key in data else "" for data in options.values()]
        lines.append(f"| `{prefix}{key}` | " + " | ".join(cells) + " |")
    return lines


def specific_table() -> list[str]:
    files = sorted((CONF_DIR / "specific").glob("*.yaml"))
    if not files:
        return []
    lines = [
        "## `+specific=` configs",
        "",
        "Files under `sparsetrain/conf/specific/` start with `# @package _global_` and override "
        "keys across groups (the reference's tuned settings, and our CPU-scale Fashion-MNIST "
        "ones). Use them as `+specific=<name>`; the make targets do.",
        "",
        "| name | what |",
        "|---|---|",
    ]
    for path in files:
        lines.append(f"| `{path.stem}` | {_cell(_first_comment(path))} |")
    lines.append("")
    for path in files:
        body = path.read_text(encoding="utf-8").rstrip()
        lines += [f'??? note "specific/{path.name}"', "", "    ```yaml"]
        lines += [f"    {line}" if line else "" for line in body.splitlines()]
        lines += ["    ```", ""]
    return lines


def other_groups() -> list[str]:
    lines: list[str] = []
    hydra_dir = CONF_DIR / "hydra"
    if hydra_dir.is_dir():
        lines += ["## Hydra plug-in configs shipped with sparsetrain", ""]
        for path in sorted(hydra_dir.rglob("*.yaml")):
            group = path.parent.relative_to(CONF_DIR).as_posix()
            first = (_first_comment(path) or "(no description)").split(". ")[0].rstrip(".")
            lines.append(f"- `{group}={path.stem}`: {first}.")
            lines += ["", f'??? note "{group}/{path.name}"', "", "    ```yaml"]
            body = path.read_text(encoding="utf-8").rstrip().splitlines()
            lines += [f"    {line}" if line else "" for line in body]
            lines += ["    ```", ""]
        lines.append("")
    return lines


def default_job() -> list[str]:
    path = CONF_DIR / "config.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    defaults = [d for d in data.pop("defaults", []) if isinstance(d, dict)]
    data.pop("hydra", None)
    lines = [
        "## The default job",
        "",
        "`sparsetrain` with no overrides (`make run`) composes `sparsetrain/conf/config.yaml`: "
        + ", ".join(f"`{k}={v}`" for d in defaults for k, v in d.items())
        + ", and sets "
        + ", ".join(f"`{k}={_fmt(v).strip('`')}`" for k, v in _flatten(data).items())
        + ". Print any composed config with `sparsetrain --cfg job <overrides>`.",
        "",
    ]
    return lines


def render() -> str:
    out: list[str] = [
        "<!-- generated by docs/gen_config_reference.py at build time: do not edit here -->",
        "",
    ]
    out += default_job()
    for title, cls, prefix, group in SECTIONS:
        heading = f"## `{prefix.rstrip('.')}`" if prefix else f"## {title}"
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        out += [heading, ""]
        if doc and not doc.startswith(cls.__name__ + "("):
            out += [doc, ""]
        out += section_table(cls, prefix)
        out.append("")
        if group:
            matrix = group_matrix(group, prefix)
            if matrix:
                out += [*matrix, ""]
    out += [*specific_table(), ""]
    out += other_groups()
    return "\n".join(out)


if __name__ == "__main__":
    print(render())
    missing = undocumented_keys()
    if missing:
        print(f"\n<!-- keys without a MEANING entry: {', '.join(missing)} -->")
