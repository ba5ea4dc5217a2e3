"""fmnist's exceptions. The CLI turns every one of them into a single line on stderr."""

from __future__ import annotations

INTERRUPTED = 130  # the exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells report it


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none), for one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class FmnistError(Exception):
    """Base class: a problem the user can fix, reported as one line without a traceback."""

    exit_code = 1


class UsageError(FmnistError):
    """Invalid option or configuration value (exit code 2, like other CLI usage errors)."""

    exit_code = 2


class DataError(FmnistError):
    """A dataset file is missing, corrupt, or not Fashion-MNIST."""


class CheckpointError(FmnistError):
    """A checkpoint or run directory cannot be trusted or read."""


class RunLockedError(FmnistError):
    """Another process is writing to this run directory."""
