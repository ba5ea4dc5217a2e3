"""The one Executor protocol: how the runs of a plan get trained.

Three implementations: `InProcessExecutor` (here, one after another: the default),
`fmnist.experiments.jobs.ProcessExecutor` (`--jobs N` worker processes on this machine) and
`fmnist.experiments.ray_tasks.RayExecutor` (`--ray`: each run a Ray task on a cluster). Each
takes what it needs from the study's session: its folder, its data, its display and notifications.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from fmnist.config import TrainConfig
from fmnist.data.dataset import FashionMNIST
from fmnist.experiments.plan import PlannedRun
from fmnist.inference.rundir import RunResultsFile, prepare_run_dir
from fmnist.training.results import RunResult, TrainCallback
from fmnist.training.run_writer import train_into


class Session(Protocol):
    """What an executor takes from the study's session (fmnist.experiments.session.Session, which holds
    the executor: declared here so the two modules do not import each other)."""

    notify: Callable[[str], None]

    @property
    def folder(self) -> Path: ...

    @property
    def dataset(self) -> FashionMNIST: ...

    def callbacks(self, name: str, config: TrainConfig) -> list[TrainCallback]: ...

    def announce(self, name: str, result: RunResult) -> None: ...


class Executor(Protocol):
    def __call__(self, planned: list[PlannedRun], session: Session) -> list[RunResultsFile]:
        """Train `planned` into their folders under `session.folder`, on `session.dataset`; return each
        run's results.json as a record, in plan order, announcing each finished run to the session."""
        ...


class InProcessExecutor:
    """Trains the runs here, one after another."""

    def __call__(self, planned: list[PlannedRun], session: Session) -> list[RunResultsFile]:
        dataset, results = session.dataset, list[RunResultsFile]()
        for run in planned:
            result = train_into(run.config, prepare_run_dir(session.folder / run.run_name), dataset,
                                session.callbacks(run.run_name, run.config))  # fmt: skip
            session.announce(run.run_name, result)
            results.append(result.to_results())
        return results
