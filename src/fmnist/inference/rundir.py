"""The layout of a run directory, which every layer reads: file names, creating and locking a
run directory for writing, and reading a finished run's results and history.

    RUN_DIR/
      config.toml        the full, resolved TrainConfig
      environment.json   versions of Python, torch, numpy, fmnist; device; precision; host CPU
      metrics.jsonl      one JSON object per finished epoch
      model.safetensors  best-by-validation weights
      model.json         how to rebuild the model (fmnist.inference.checkpoint)
      results.json       summary: model, params, test accuracy/loss, best epoch, timings, data
      .lock              held while a process writes the run (fmnist.inference.rundir.RunLock)

Writing a run as it trains is fmnist.training.rundirs' job.
"""

from __future__ import annotations

import fcntl
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from fmnist.errors import FmnistError, RunLockedError, RunPathError, UsageError
from fmnist.fsutil import read_json
from fmnist.inference.checkpoint import META_FILE

RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.toml"
LOCK_FILE = ".lock"
RUNS_ROOT = Path("runs")  # where new results go when no --out is given


def new_run_dir(out: str | Path | None, name: str, *, overwrite: bool = False, resume_hint: str = "") -> Path:
    """Name and create the folder for a new run, comparison, ablation, ensemble or sweep.

    `out`, or RUNS_ROOT/NAME-YYYYmmdd-HHMMSS. The one place results folders are named; the
    checks are `prepare_run_dir`'s. With `resume_hint` (sweeps, whose folders hold no run),
    any non-empty folder is refused, and the message says how to continue it instead.
    """
    path = Path(out) if out else RUNS_ROOT / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if resume_hint and path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(f"{path}: exists and is not empty; choose another --out (or {resume_hint})")
    return prepare_run_dir(path, overwrite=overwrite)


def prepare_run_dir(path: Path, *, overwrite: bool = False) -> Path:
    """Create `path` for a new run; refuse to mix a new run into a finished or foreign one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path}: exists and is a file, not a run directory")
    if path.is_dir() and any(path.iterdir()):
        finished = (path / RESULTS_FILE).exists() or (path / META_FILE).exists()
        if finished and not overwrite:
            raise UsageError(f"{path}: already holds a run; choose another --out (or pass --overwrite)")
        if not finished and not (path / CONFIG_FILE).exists() and not overwrite:
            raise UsageError(f"{path}: folder is not empty and is not a run directory; choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FmnistError(f"{path}: cannot create run directory ({exc.strerror})") from None
    return path


class RunLock:
    """An exclusive advisory lock on RUN_DIR/.lock for as long as a run writes there.

    The OS drops the lock when the process dies, so a killed run never leaves a stale lock; a
    released lock removes its file, so a finished run leaves none behind either.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise FmnistError(f"{self.path}: cannot create lock file ({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunLockedError(
                    f"{self.path.parent}: another fmnist process is writing to this run directory"
                ) from None
            # The holder we waited on may have removed the file between our open and our lock:
            # a lock on that orphaned file guards nothing, so start again on the file there now.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is not None:
            # Removed while still held: whoever opened it meanwhile sees it gone and retries.
            self.path.unlink(missing_ok=True)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def read_results(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise RunPathError(f"{run_dir}: no {RESULTS_FILE} (not a finished run directory)")
    return read_json(path)


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a crash ends the readable history
    return rows
