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


class PathError(UsageError):
    """A path given does not exist, or is not the kind the command takes: a usage mistake (exit
    code 2), like an invalid option; a file that is there but broken is a failed run (exit code 1)."""


class DataError(FmnistError):
    """A dataset file is missing, corrupt, or not Fashion-MNIST."""


class DataPathError(DataError, PathError):
    """The data folder given does not exist or is not a folder."""


class CheckpointError(FmnistError):
    """A checkpoint or run directory cannot be trusted or read."""


class RunPathError(CheckpointError, PathError):
    """The run directory given does not exist or is not a run directory."""


class RunLockedError(FmnistError):
    """Another process is writing to this run directory."""


def did_you_mean(name: object, known: list[str] | tuple[str, ...]) -> str:
    """' (did you mean 'fastcnn'?)' for a mistyped name close to a known one, else ''."""
    import difflib

    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
