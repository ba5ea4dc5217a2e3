"""Crash-safe file output (every file fmnist writes appears whole or not at all), and reading JSON and
TOML files back with one-line errors that name the file."""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from fmnist.errors import FmnistError, UsageError

# Fault injection for the crash tests: "NAME:N" SIGKILLs this process during the N-th atomic
# write of a file whose name contains NAME, after the temp file is complete but before the
# rename; exactly the moment a power cut would hurt a non-atomic writer.
FAULT_ENV = "FMNIST_FAULT_KILL_WRITE"
_fault_counts: dict[str, int] = {}


def _maybe_inject_fault(path: Path) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec or ":" not in spec:
        return
    name, _, nth = spec.rpartition(":")
    if name in path.name:
        _fault_counts[name] = _fault_counts.get(name, 0) + 1
        if str(_fault_counts[name]) == nth:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some filesystems do not allow opening directories; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _describe_os_error(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return f"{path}: no space left on device"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{path}: not writable ({exc.strerror})"
    if exc.errno == errno.ENOTDIR:
        return f"{path}: a parent of this path is a file, not a folder"
    return f"{path}: cannot write ({exc.strerror or exc})"


def current_umask() -> int:
    """The process umask, read without changing it (Linux reports it in /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere the only way to read it is to set it; put it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces `path` only if the block finishes without error.

    The data goes to a temporary file in the same folder (so the rename cannot cross
    filesystems), is fsynced, then renamed over `path`; on any error the temp file is removed
    and `path` keeps its previous content.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise FmnistError(_describe_os_error(path, exc)) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            # mkstemp makes the file private (0600); give it the mode open() would have given it,
            # so a run folder's files are as readable as its figures unless the umask says otherwise.
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _maybe_inject_fault(path)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FmnistError(_describe_os_error(path, exc)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path) as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_save(path: Path, save: Callable[[Path], None]) -> None:
    """Atomically produce `path` with a library function that only writes to a file name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise FmnistError(_describe_os_error(path, exc)) from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def append_line(path: Path, line: str) -> None:
    """Append one line and fsync: a crash loses at most the line being written."""
    try:
        with open(path, "a", encoding="utf-8") as handle:
            text = line.rstrip("\n") + "\n"
            if os.environ.get(FAULT_ENV):  # crash tests: tear the line in half, then die
                handle.write(text[: len(text) // 2])
                handle.flush()
                _maybe_inject_fault(Path(path))
                text = text[len(text) // 2 :]
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise FmnistError(_describe_os_error(Path(path), exc)) from None


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FmnistError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FmnistError(f"{path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise FmnistError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


# Where tomllib says a file went wrong: "Invalid value (at line 3, column 7)", "... (at end of document)".
_TOML_PLACE = re.compile(r"^(?P<reason>.*) \(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)$")


def read_toml(path: Path, what: str = "config file") -> dict[str, object]:
    """A TOML file's table; a missing, unreadable or malformed file is one line naming it (and the line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the {what} ({exc})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        place = _TOML_PLACE.match(str(exc))
        if place is None:
            raise UsageError(f"{path}: invalid TOML ({exc})") from None
        reason = place["reason"][:1].lower() + place["reason"][1:]
        if place["line"] is None:
            line, where = max(1, len(text.splitlines())), "at the end of the file"
        else:
            line, where = int(place["line"]), f"column {place['column']}"
        raise UsageError(f"{path}:{line}: invalid TOML ({reason}, {where})") from None
