"""Several runs at once on this machine: `--jobs N` for compare, ablate and `train --seeds`.

One small network leaves most of a machine idle. On a CPU, torch's threads spend a growing
share of each of its small kernels waiting on one another; on a GPU, the GPU waits on kernel
launches. N runs side by side, each in its own process with 1/N of the CPU threads, fill it
instead. Each run trains exactly as it would alone with that many threads, so its figures
repeat bit for bit on the CPU for the same --jobs on the same machine. Like any change of
thread count, they can differ in the last digits from a run trained with other threads.

The worker processes are started fresh (spawn, never fork: torch's thread pools do not survive
a fork) and get the parent's dataset, so every run trains on the same bytes. They ignore Ctrl-C:
the parent ends them, by process, when the user interrupts, when a run fails, or when a worker
dies; the epochs each run finished stay in its run directory.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmnist.comparison import MakeCallbacks, OnResult, PlannedRun
from fmnist.config import TrainConfig
from fmnist.data.dataset import FashionMNIST
from fmnist.errors import FmnistError, UsageError, first_line
from fmnist.progress import epoch_line
from fmnist.results import EpochRecord, TrainCallback
from fmnist.runs import prepare_run_dir, read_results, result_from_dir, train_into

POLL_SECONDS = 0.5  # how often the parent looks for a dead worker while no event arrives
STOP_SECONDS = 10.0  # how long a worker may take to end after SIGTERM before it is killed


def threads_per_job(jobs: int, threads: int | None = None) -> int:
    """CPU threads for each of `jobs` runs: an equal share of torch's threads here, at least one."""
    import torch

    return max(1, (threads or torch.get_num_threads()) // jobs)


def check_jobs(jobs: int | None, ray: str | None = None) -> int:
    """`jobs` checked: a whole number >= 1, and not together with Ray (which places runs itself)."""
    if jobs is None:
        return 1
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UsageError(f"jobs must be a whole number >= 1, not {jobs!r}")
    if jobs > 1 and ray:
        raise UsageError("--jobs runs several runs at once on this machine and --ray places them on a cluster; give one")
    return jobs


@dataclass(frozen=True)
class _Task:
    index: int
    config: TrainConfig
    run_dir: Path


class _EpochEvents(TrainCallback):
    """In a worker: sends each finished epoch to the parent, which prints it."""

    def __init__(self, events: Any, index: int):
        self.events = events
        self.index = index

    def on_epoch_end(self, record: EpochRecord, is_best: bool) -> None:
        self.events.put(("epoch", self.index, record, is_best))


def _worker(worker: int, dataset: FashionMNIST, threads: int, tasks: Any, events: Any) -> None:
    """A worker process: train tasks from `tasks` until it reads None; report to `events`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C stops
    import torch

    torch.set_num_threads(threads)
    while (task := tasks.get()) is not None:
        events.put(("start", task.index, worker))
        try:
            train_into(task.config, task.run_dir, dataset, [_EpochEvents(events, task.index)])
        except FmnistError as exc:
            events.put(("error", task.index, str(exc)))
            return
        except BaseException as exc:  # anything else still ends as one line in the parent
            events.put(("error", task.index, f"{type(exc).__name__}: {first_line(exc)}"))
            return
        events.put(("done", task.index))


class ProcessExecutor:
    """A comparison.Executor that trains up to `jobs` planned runs at once, each in a worker process."""

    def __init__(self, jobs: int, threads_per_run: int | None = None, notify: Callable[[str], None] = lambda _m: None):
        self.jobs = check_jobs(jobs)
        self.threads = threads_per_run or threads_per_job(jobs)
        self.notify = notify

    def __call__(self, planned: list[PlannedRun], out_dir: Path, dataset: FashionMNIST, make_callbacks: MakeCallbacks,
                 on_result: OnResult) -> list[dict[str, Any]]:  # fmt: skip
        run_dirs = [prepare_run_dir(out_dir / run.run_name) for run in planned]  # refuse a bad folder before any work
        context = multiprocessing.get_context("spawn")
        tasks, events = context.Queue(), context.Queue()
        for index, (run, run_dir) in enumerate(zip(planned, run_dirs)):
            tasks.put(_Task(index, run.config, run_dir))
        workers = [context.Process(target=_worker, args=(w, dataset, self.threads, tasks, events), daemon=True,
                                   name=f"fmnist-job-{w}")  # fmt: skip
                   for w in range(min(self.jobs, len(planned)))]
        for _ in workers:
            tasks.put(None)
        self.notify(f"{len(planned)} run(s), {len(workers)} at a time, {self.threads} CPU thread(s) each")
        results: list[dict[str, Any]] = [{} for _ in planned]
        running: dict[int, int] = {}  # worker -> the index of the run it trains
        try:
            for process in workers:
                process.start()
            remaining, quiet_deaths = len(planned), 0
            while remaining:
                try:
                    event = events.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    # A worker's last events can still be in the pipe when it is seen dead: wait one more poll.
                    lost = _lost_work(workers, running, planned)
                    quiet_deaths = quiet_deaths + 1 if lost else 0
                    if quiet_deaths > 1:
                        raise FmnistError(lost) from None
                    continue
                quiet_deaths = 0
                kind, index = event[0], event[1]
                run = planned[index]
                if kind == "start":
                    running[event[2]] = index
                elif kind == "epoch":
                    self.notify(epoch_line(run.run_name, event[2], run.config.epochs, event[3]))
                elif kind == "error":
                    raise FmnistError(f"{run.run_name}: {event[2]}")
                else:  # done
                    running = {w: i for w, i in running.items() if i != index}
                    on_result(run.run_name, result_from_dir(run_dirs[index], run.config))
                    results[index] = read_results(run_dirs[index])
                    remaining -= 1
        finally:
            _stop(workers)
            for channel in (tasks, events):  # what is still queued is dropped, not waited for
                channel.cancel_join_thread()
                channel.close()
        return results



def _lost_work(workers: list, running: dict[int, int], planned: list[PlannedRun]) -> str | None:
    """Why runs can no longer finish (a worker died in one, or none is left), or None."""
    for worker, index in running.items():
        if not workers[worker].is_alive():
            return (f"{planned[index].run_name}: its worker process died (exit code {workers[worker].exitcode}) before "
                    "the run finished; its finished epochs are in its run directory")  # fmt: skip
    if not any(process.is_alive() for process in workers):
        codes = ", ".join(str(process.exitcode) for process in workers)
        return f"every worker process ended before the runs finished (exit codes {codes})"
    return None


def _stop(workers: list) -> None:
    """End every worker still running, by its process: SIGTERM, then SIGKILL after STOP_SECONDS."""
    for process in workers:
        if process.is_alive():
            process.terminate()
    for process in workers:
        if process.pid is not None:
            process.join(STOP_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()
