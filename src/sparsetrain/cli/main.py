"""The `sparsetrain` command (also `python -m sparsetrain` and the reference's `python main.py`).

    sparsetrain [hydra overrides]        train (the Hydra app; `--cfg job` prints the config,
                                         `-m` runs a sweep; returns mean val accuracy over
                                         `multi_seed` for the Optuna sweeper)
    sparsetrain flops|report|export ...  sub-commands, each `main(argv) -> int` in its module

Errors: any `SparsetrainError`, Hydra composition error (unknown group option, misspelt key,
wrong type) or failure to create the run directory prints ONE line, `error: <message>`, on
stderr and exits with 2 (bad input) or 1 (failure while running); no traceback unless
`HYDRA_FULL_ERROR=1`. Bad input overwrites nothing: the config (and any checkpoint to resume)
is validated before the run directory's `.hydra/` is written (we ask Hydra not to write it
itself and write the same three files after validation).

Distributed: `torchrun --standalone --nproc_per_node=N -m sparsetrain <overrides>` (or any
launcher that sets RANK/WORLD_SIZE, or SLURM / submitit with several tasks per job) runs the
same command on N ranks; the trainer joins the process group (`sparsetrain.distributed`), rank 0
alone writes `.hydra/` and the results, and the group is torn down when the command ends.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

SUBCOMMANDS = {
    "flops": "sparsetrain.cli.flops",
    "report": "sparsetrain.report.cli",
    "export": "sparsetrain.cli.export",
}
_USER_FULL_ERROR = "SPARSETRAIN_USER_FULL_ERROR"  # the user's HYDRA_FULL_ERROR, kept for the task
_WRITE_HYDRA_DIR = "SPARSETRAIN_WRITE_HYDRA_DIR"  # set when we took over writing .hydra/
_task_started = False


# --------------------------------------------------------------------------- errors
def _full_errors() -> bool:
    value = os.environ.get(_USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR", ""))
    return value.strip().lower() in ("1", "true", "yes")


def _first_line(text: str) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _schema_keys(dotted_parent: str) -> list[str] | None:
    """Valid keys under a config node, from the typed schema (None if unknown)."""
    from sparsetrain.config import Config

    node: Any = Config
    for part in [p for p in dotted_parent.split(".") if p]:
        match = [f for f in fields(node) if f.name == part] if is_dataclass(node) else []
        if not match:
            return None
        node = (
            match[0].default_factory() if callable(match[0].default_factory) else match[0].default
        )
        node = type(node) if is_dataclass(node) else node
    return [f.name for f in fields(node)] if is_dataclass(node) else None


def _hydra_message(exc: BaseException) -> str:
    """One line for a Hydra / OmegaConf composition error, naming the valid choices."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(exc, OverrideParseException):
        return f"cannot parse override {exc.override!r}: {_first_line(exc.message)}"
    if isinstance(exc, MissingConfigException):
        text = str(exc)
        found = re.search(r"Could not (?:find|load) '([^']+)'", text)
        missing = found.group(1) if found else str(exc.missing_cfg_file)
        group, _, option = missing.rpartition("/")
        if exc.options:
            from sparsetrain.errors import choices_message

            options = [o for o in exc.options if o != "schema"]  # typed-schema entries
            return choices_message(group or "config", option, options)
        return _first_line(text)

    cause = exc.__cause__ or exc.__context__
    key = getattr(cause, "full_key", None) or getattr(exc, "full_key", None)
    cause_text = _first_line(str(cause)) if cause is not None else ""
    if key and ("not in struct" in cause_text or ("Key '" in cause_text and "not" in cause_text)):
        parent, _, leaf = str(key).rpartition(".")
        valid = _schema_keys(parent) or []
        hint = difflib.get_close_matches(leaf, valid, n=1)
        prefix = f"{parent}." if parent else ""
        msg = f"unknown config key {key!r}"
        if hint:
            msg += f" (did you mean {prefix}{hint[0]}?)"
        if valid:
            msg += f"; valid keys{' in ' + parent if parent else ''}: {', '.join(valid)}"
        return msg
    if key and cause_text:
        return f"invalid value for {key}: {cause_text}"
    if cause_text and "Could not override" not in cause_text:
        return f"{_first_line(str(exc))} {cause_text}".strip()
    return _first_line(str(exc)) or type(exc).__name__


def describe(exc: BaseException) -> tuple[int, str]:
    """(exit code, one-line message) for an exception that reached the CLI."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from sparsetrain.errors import SparsetrainError

    if isinstance(exc, SparsetrainError):
        return exc.exit_code, _one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, HydraException | OmegaConfBaseException):
        return 2, _hydra_message(exc)
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted"
    oserror = _find_cause(exc, OSError)
    if oserror is not None and not _task_started:  # Hydra creating the run dir / its log file
        where = f" {oserror.filename}" if oserror.filename else ""
        return 2, (
            f"cannot write the run directory{where} ({oserror.strerror or oserror}); "
            "choose another with hydra.run.dir=<dir>"
        )
    text = _first_line(str(exc))
    return (
        1,
        f"{type(exc).__name__}{': ' + text if text else ''} (HYDRA_FULL_ERROR=1 shows the traceback)",
    )


def _find_cause(exc: BaseException, kind: type) -> Any:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _report(exc: BaseException) -> int:
    code, message = describe(exc)
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


# --------------------------------------------------------------------------- the Hydra app
def _save_hydra_files(cfg: DictConfig, run_dir: Path) -> None:
    """Write `.hydra/{config,hydra,overrides}.yaml` as Hydra would (after validation)."""
    from hydra.core.hydra_config import HydraConfig

    from sparsetrain import distributed

    subdir = os.environ.get(_WRITE_HYDRA_DIR)
    if not subdir or not distributed.is_main():
        return
    hydra_cfg = OmegaConf.create(OmegaConf.to_container(HydraConfig.instance().cfg))
    hydra_cfg.hydra.output_subdir = subdir
    out = run_dir / subdir
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml")
    OmegaConf.save(hydra_cfg, out / "hydra.yaml")
    OmegaConf.save(hydra_cfg.hydra.overrides.task, out / "overrides.yaml")


def task(cfg: DictConfig) -> float | None:
    """Validate, write `.hydra/`, train every seed; return the mean validation accuracy."""
    global _task_started
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from sparsetrain.train import runner

    _task_started = True
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        runner.preflight(cfg, run_dir)
        _save_hydra_files(cfg, run_dir)
        mean, _ = runner.run_seeds(cfg, run_dir)
        return mean
    except (Exception, KeyboardInterrupt) as exc:
        if _full_errors() or hc.mode == RunMode.MULTIRUN:
            raise  # a sweep's launcher/sweeper records the failure; main() prints one line
        raise SystemExit(_report(exc)) from None


@hydra.main(config_path="pkg://sparsetrain.conf", config_name="config", version_base="1.3")
def hydra_app(cfg: DictConfig) -> float | None:
    return task(cfg)


# --------------------------------------------------------------------------- entry point
def _subcommand(name: str, argv: list[str]) -> int:
    try:
        module = importlib.import_module(SUBCOMMANDS[name])
    except ImportError as exc:
        print(f"error: the '{name}' command is not available ({exc})", file=sys.stderr)
        return 1
    try:
        return int(module.main(argv) or 0)
    except SystemExit:
        raise
    except (Exception, KeyboardInterrupt) as exc:
        if _full_errors():
            raise
        return _report(exc)


def _with_injected_overrides(argv: list[str]) -> list[str]:
    """Ask Hydra not to write `.hydra/` itself (the task writes it after validation).

    The override is inserted inside the user's own block of overrides (argparse takes them as
    one contiguous positional list), so flags before or after it keep working."""
    import contextlib
    import io

    from hydra._internal.utils import get_args_parser

    os.environ.pop(_WRITE_HYDRA_DIR, None)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = get_args_parser().parse_args(argv)
    except SystemExit:  # bad flags: Hydra reports them itself
        return argv
    if args.cfg or args.help or args.hydra_help or args.info or args.shell_completion:
        return argv  # nothing will run
    overrides = list(args.overrides)
    if any(o.lstrip("+~").startswith("hydra.output_subdir") for o in overrides):
        return argv  # the user chose; Hydra writes it
    os.environ[_WRITE_HYDRA_DIR] = ".hydra"
    extra = "hydra.output_subdir=null"
    n = len(overrides)
    for i in range(len(argv) - n, -1, -1):
        if n and argv[i : i + n] == overrides:
            return [*argv[: i + n], extra, *argv[i + n :]]
    return [*argv, extra]


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the command, return its exit code (never a traceback
    unless HYDRA_FULL_ERROR=1)."""
    global _task_started
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return _subcommand(argv[0], argv[1:])
    if argv in (["--version"], ["-V"]):
        import sparsetrain

        print(f"sparsetrain {sparsetrain.__version__}")
        return 0

    from sparsetrain.config import register_configs

    register_configs()
    saved_env = {
        k: os.environ.get(k) for k in ("HYDRA_FULL_ERROR", _USER_FULL_ERROR, _WRITE_HYDRA_DIR)
    }
    os.environ[_USER_FULL_ERROR] = "1" if _full_errors() else "0"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises; we print the one line ourselves
    saved_argv = sys.argv
    sys.argv = [saved_argv[0] if saved_argv else "sparsetrain", *_with_injected_overrides(argv)]
    _task_started = False
    code = 0
    try:
        hydra_app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (Exception, KeyboardInterrupt) as exc:
        if os.environ.get(_USER_FULL_ERROR) == "1":
            raise
        code = _report(exc)
    finally:
        from sparsetrain import distributed

        distributed.teardown()  # if the run joined a process group
        sys.argv = saved_argv
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return code


if __name__ == "__main__":
    sys.exit(main())
