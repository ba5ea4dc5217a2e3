"""Compare, ablate and `train --seeds` on Ray: each planned run is one Ray task.

A task trains exactly what the local loop would (same config, same dataset bytes, torch
pinned to the same number of threads) into a scratch folder on its worker and returns the
run directory's files; the driver writes them into the usual folder under the compare
directory. So the cluster needs no shared storage for these, and the results, compare.json
and report are the ones a local run writes, bit for bit on the CPU.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmnist.config import TrainConfig
from fmnist.data.dataset import FashionMNIST
from fmnist.errors import FmnistError
from fmnist.experiments.plan import PlannedRun
from fmnist.experiments.ray_runtime import (
    RaySession,
    ShippedDataset,
    pin_threads,
    receive_dataset,
    require_ray,
    ship_dataset,
    task_error,
)
from fmnist.fsutil import atomic_write_bytes
from fmnist.inference.rundir import LOCK_FILE, RunLock, RunResultsFile, prepare_run_dir, read_results
from fmnist.training.run_writer import result_from_dir, train_into

if TYPE_CHECKING:
    from fmnist.experiments.executor import Session

# A task whose worker dies is run again from the start (its scratch folder died with it);
# the run is deterministic, so the retry gives the same result.
TASK_RETRIES = 2


def gpus_for(config: TrainConfig) -> int:
    """A run that asks for CUDA gets one GPU; `auto` runs where Ray puts it, which is a CPU slot."""
    return 1 if config.device == "cuda" else 0


def train_remote(config: TrainConfig, shipped: ShippedDataset, threads: int) -> dict[str, bytes]:
    """The Ray task: train one run into a scratch folder and return its files (relative path -> bytes)."""
    dataset = receive_dataset(shipped)
    pin_threads(threads)
    with tempfile.TemporaryDirectory(prefix="fmnist-run-") as scratch:
        run_dir = Path(scratch) / "run"
        run_dir.mkdir()
        train_into(config, run_dir, dataset)
        return {path.relative_to(run_dir).as_posix(): path.read_bytes()
                for path in sorted(run_dir.rglob("*")) if path.is_file() and path.name != LOCK_FILE}  # fmt: skip


def write_home(run_dir: Path, files: dict[str, bytes]) -> None:
    with RunLock(run_dir):
        for relative, data in files.items():
            target = run_dir / relative
            if not target.resolve().is_relative_to(run_dir.resolve()):
                raise FmnistError(f"a Ray task returned a file outside its run directory: {relative}")
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data)


class RayExecutor:
    """An Executor that runs every planned run as a Ray task, inside a RaySession on `address`
    ('local' or HOST:PORT) for the length of the call."""

    def __init__(self, address: str, threads_per_run: int | None = None):
        import torch

        require_ray()  # before any folder or data: a missing extra is one line
        self.address = address
        # The local loop trains with torch's default thread count; so do the tasks, pinned.
        self.threads = threads_per_run or torch.get_num_threads()

    def _fitting_threads(self, ray: Any, session: Session) -> int:
        """The threads per run, cut to the CPUs of the largest live node: Ray would otherwise hold the
        tasks forever, without a word, on a cluster whose nodes are smaller than this machine."""
        largest = max((int(node.get("Resources", {}).get("CPU", 0)) for node in ray.nodes() if node.get("Alive")),
                      default=0)  # fmt: skip
        if largest < 1 or largest >= self.threads:
            return self.threads
        session.notify(f"each run trains with {largest} thread(s), the CPUs of the largest Ray node "
                       f"(here torch would use {self.threads}; results match a local run with that many threads)")  # fmt: skip
        return largest

    def __call__(self, planned: list[PlannedRun], session: Session) -> list[RunResultsFile]:
        dataset = session.dataset
        run_dirs = [prepare_run_dir(session.folder / run.run_name) for run in planned]  # refuse a bad folder first
        with RaySession(self.address, notify=session.notify):
            return self._train(planned, run_dirs, dataset, session)

    def _train(self, planned: list[PlannedRun], run_dirs: list[Path], dataset: FashionMNIST,
               session: Session) -> list[RunResultsFile]:  # fmt: skip
        ray = require_ray()
        shipped = ship_dataset(dataset)
        remote = ray.remote(train_remote)
        threads = self._fitting_threads(ray, session)
        pending: dict[Any, int] = {}
        for index, run in enumerate(planned):
            options = {"num_cpus": threads, "num_gpus": gpus_for(run.config), "max_retries": TASK_RETRIES,
                       "name": f"fmnist {run.run_name}"}  # fmt: skip
            pending[remote.options(**options).remote(run.config, shipped, threads)] = index
        session.notify(f"{len(planned)} run(s) sent to Ray, {threads} CPU(s) each")
        results: dict[int, RunResultsFile] = {}  # plan index -> its results.json, as runs finish
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(done[0])
                run, run_dir = planned[index], run_dirs[index]
                try:
                    files = ray.get(done[0])
                except ray.exceptions.RayError as exc:
                    raise task_error(exc, run.run_name) from None
                write_home(run_dir, files)
                session.announce(run.run_name, result_from_dir(run_dir, run.config))
                results[index] = read_results(run_dir)
        finally:
            for ref in pending:  # an error or Ctrl-C: nothing keeps running on the cluster
                ray.cancel(ref, force=True)
        return [results[index] for index in range(len(planned))]
