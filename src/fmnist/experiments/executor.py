"""The one Executor protocol: how the runs of a plan get trained.

Three implementations: `InProcessExecutor` (here, one after another: the default),
`fmnist.experiments.jobs.ProcessExecutor` (`--jobs N` worker processes on this machine) and
`fmnist.experiments.ray_tasks.RayExecutor` (`--ray`: each run a Ray task on a cluster).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from fmnist.config import TrainConfig
from fmnist.data.dataset import FashionMNIST
from fmnist.experiments.plan import PlannedRun
from fmnist.inference.rundir import prepare_run_dir
from fmnist.training.results import RunResult, TrainCallback
from fmnist.training.run_writer import train_into

MakeCallbacks = Callable[[str, TrainConfig], list[TrainCallback]]  # (run name, config) -> its progress callbacks
OnResult = Callable[[str, RunResult], None]  # hears each finished run (name, result)


class Executor(Protocol):
    def __call__(self, planned: list[PlannedRun], out_dir: Path, dataset: FashionMNIST, make_callbacks: MakeCallbacks,
                 on_result: OnResult) -> list[dict[str, Any]]:  # fmt: skip
        """Train `planned` into their folders under `out_dir`; return each run's results.json, in plan order."""
        ...


class InProcessExecutor:
    """Trains the runs here, one after another."""

    def __call__(self, planned: list[PlannedRun], out_dir: Path, dataset: FashionMNIST, make_callbacks: MakeCallbacks,
                 on_result: OnResult) -> list[dict[str, Any]]:  # fmt: skip
        results = []
        for run in planned:
            result = train_into(run.config, prepare_run_dir(out_dir / run.run_name), dataset,
                                make_callbacks(run.run_name, run.config))  # fmt: skip
            on_result(run.run_name, result)
            results.append(result.to_results().to_json())
        return results
