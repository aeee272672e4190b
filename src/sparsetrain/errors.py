"""Typed errors. The CLI turns any `SparsetrainError` into one line on stderr and its exit code.

Bad user input (unknown names, out-of-range values, missing or corrupt files) exits with 2;
failures discovered while running (a diverged loss, say) exit with 1.
"""

from __future__ import annotations


class SparsetrainError(Exception):
    """Base class: a failure the user can act on, reported without a traceback."""

    exit_code = 1


class ConfigError(SparsetrainError, ValueError):
    """Invalid configuration or argument (unknown name, value out of range)."""

    exit_code = 2


class DataError(SparsetrainError):
    """Data set files missing, corrupt or unreadable."""

    exit_code = 2


class CheckpointError(SparsetrainError):
    """A checkpoint that is missing, corrupt, or belongs to another model/config."""

    exit_code = 2


class TrainingDiverged(SparsetrainError):
    """The loss became NaN or infinite."""

    exit_code = 1


def choices_message(kind: str, name: object, choices: list[str] | tuple[str, ...]) -> str:
    """One-line message for an unknown name that lists what would have been accepted."""
    return f"unknown {kind} {name!r}; valid choices: {', '.join(sorted(choices))}"


class UnsupportedOptimizer(SparsetrainError, TypeError):
    """An optimizer whose per-weight state the engine cannot reset for regrown connections."""

    exit_code = 2
