"""One study's plumbing: where it writes, what it trains on, who trains the runs and who hears of them.

A compare, an ablation, `train --seeds` and a sweep each get one `Session` from the API, which
turns its keyword options (out, data, data_dir, progress, notify, ray, jobs) into it once; every
layer below takes the session instead of those options. Its folder and its data are made on
first use, so a plan or a sweep config that fails its checks leaves no folder and loads nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from rich.console import Console

from fmnist.config import TrainConfig
from fmnist.data.dataset import FashionMNIST
from fmnist.experiments.executor import Executor, InProcessExecutor
from fmnist.inference.rundir import new_run_dir
from fmnist.training.progress import MultiRunProgress
from fmnist.training.results import RunResult, TrainCallback

Notify = Callable[[str], None]  # hears one status line ("4 run(s), 2 at a time, ...")


def quiet(_message: str) -> None:
    """The notifications of a session nobody listens to."""


@dataclass
class Session:
    """What the runs of one study share (see the module docstring); closing it removes any live bar."""

    out: str | Path | None = None  # the folder asked for (--out); None: runs/NAME-TIMESTAMP
    name: str = "compare"  # names the folder when `out` is None
    data: FashionMNIST | None = None  # the data given; None: loaded from `data_dir` on first use
    data_dir: str | Path | None = None  # None: $FMNIST_DATA, the cache, the mirrors (fmnist.data.sources)
    executor: Executor = field(default_factory=InProcessExecutor)
    display: MultiRunProgress | None = None  # None: nothing is shown
    notify: Notify = quiet

    @cached_property
    def folder(self) -> Path:
        """The study's folder, made (and its name checked) on first use, once."""
        return new_run_dir(self.out, self.name)

    @cached_property
    def dataset(self) -> FashionMNIST:
        """The data every run trains on: the given one, else loaded on first use, once."""
        if self.data is not None:
            return self.data
        from fmnist.data.sources import resolve_dataset

        return resolve_dataset(str(self.data_dir) if self.data_dir else None, notify=self.notify)

    @property
    def console(self) -> Console | None:
        """Where the display prints (a sweep draws its own display there)."""
        return self.display.console if self.display is not None else None

    def callbacks(self, name: str, config: TrainConfig) -> list[TrainCallback]:
        """The progress callbacks of run `name` as it trains here (none without a display)."""
        return self.display.callbacks(name, config) if self.display is not None else []

    def announce(self, name: str, result: RunResult) -> None:
        """Show a finished run's result line, wherever it trained."""
        if self.display is not None:
            self.display.announce(name, result)

    def close(self) -> None:
        """Remove any live bar (also when the study fails)."""
        if self.display is not None:
            self.display.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def make_executor(ray: str | None = None, jobs: int | None = None) -> Executor:
    """The executor `ray` and `jobs` ask for, checked before any folder or data: Ray tasks on the
    cluster at `ray` ('local' or HOST:PORT), `jobs` worker processes here, else one run after another here."""
    from fmnist.experiments.jobs import ProcessExecutor, check_jobs

    jobs = check_jobs(jobs, ray)
    if ray:  # only here is Ray ever imported: without it nothing of Ray loads
        from fmnist.experiments.ray_tasks import RayExecutor

        return RayExecutor(ray)
    return ProcessExecutor(jobs) if jobs > 1 else InProcessExecutor()
