"""Several runs at once on this machine: `--jobs N` for compare, ablate and `train --seeds`.

One small network leaves most of a machine idle. On a CPU, torch's threads spend a growing
share of each of its small kernels waiting on one another; on a GPU, the GPU waits on kernel
launches. N runs side by side, each in its own process with 1/N of the CPU threads, fill it
instead. Each run trains exactly as it would alone with that many threads, so its figures
repeat bit for bit on the CPU for the same --jobs on the same machine. Like any change of
thread count, they can differ in the last digits from a run trained with other threads.

Each worker is a fresh `python -c` process, never a fork (torch's thread pools do not survive
one) and never multiprocessing's spawn, which would run the caller's script again in every
worker. It talks to the parent over two pipes: the dataset once (so every run trains on the
same bytes), then one run at a time, as the parent hands them out; back come each finished
epoch and each run's end. A worker that dies closes its pipe, so the parent learns it at once.
Workers ignore Ctrl-C: the parent ends them, by process id, when the user interrupts, when a
run fails, or when a worker dies; a parent killed outright leaves workers that notice within a
second and exit. Either way the epochs each run finished stay in its run directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmnist.config import TrainConfig
from fmnist.errors import FmnistError, UsageError, first_line
from fmnist.experiments.plan import PlannedRun
from fmnist.inference.rundir import RunResultsFile, prepare_run_dir, read_results
from fmnist.training.progress import epoch_line
from fmnist.training.results import EpochRecord, TrainCallback
from fmnist.training.run_writer import result_from_dir, train_into

if TYPE_CHECKING:
    from fmnist.experiments.executor import Session

STOP_SECONDS = 10.0  # how long a worker may take to end after SIGTERM before it is killed
PARENT_CHECK_SECONDS = 1.0  # how soon a worker notices that its parent died without stopping it
WORKER_COMMAND = "from fmnist.experiments.jobs import worker_main; worker_main()"


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
        raise UsageError(
            "--jobs runs several runs at once on this machine and --ray places them on a cluster; give one"
        )
    return jobs


@dataclass(frozen=True)
class _Task:
    index: int
    config: TrainConfig
    run_dir: Path


class _EpochEvents(TrainCallback):
    """In a worker: sends each finished epoch to the parent, which prints it."""

    def __init__(self, outbox: Connection, index: int):
        self.outbox = outbox
        self.index = index

    def on_epoch_end(self, record: EpochRecord, is_best: bool) -> None:
        self.outbox.send(("epoch", self.index, record, is_best))


def _end_with_parent(parent: int) -> None:
    """Exit once the parent is gone (killed by SIGKILL or a `timeout`'s SIGTERM, say): nobody waits for this run."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)  # the run's lock goes with the process; its finished epochs stay on disk


def worker_main() -> None:
    """A worker process (argv: the fds of its two pipes): train runs from the parent until it sends None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C stops
    threading.Thread(target=_end_with_parent, args=(os.getppid(),), daemon=True).start()
    import torch

    inbox, outbox = Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False)
    dataset, threads = inbox.recv()
    torch.set_num_threads(threads)
    outbox.send(("ready", None))
    while (task := inbox.recv()) is not None:
        try:
            train_into(task.config, task.run_dir, dataset, [_EpochEvents(outbox, task.index)])
        except FmnistError as exc:
            outbox.send(("error", task.index, str(exc)))
            return
        except BaseException as exc:  # anything else still ends as one line in the parent
            outbox.send(("error", task.index, f"{type(exc).__name__}: {first_line(exc)}"))
            return
        outbox.send(("done", task.index))


class _Worker:
    """The parent's side of one worker: its process and pipes, and the run it trains (if any)."""

    def __init__(self) -> None:
        from_parent, to_worker = os.pipe()  # (read end, write end)
        from_worker, to_parent = os.pipe()
        # The worker imports fmnist from wherever this process does, also a path added at run time.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            command = [sys.executable, "-c", WORKER_COMMAND, str(from_parent), str(to_parent)]
            self.process = subprocess.Popen(command, pass_fds=(from_parent, to_parent), stdin=subprocess.DEVNULL,
                                            env=env)  # fmt: skip
        finally:
            os.close(from_parent)  # the worker's ends: held here, they would hide the worker's death
            os.close(to_parent)
        self.inbox = Connection(from_worker, writable=False)
        self.outbox = Connection(to_worker, readable=False)
        self.task: _Task | None = None

    def send(self, message: Any, planned: list[PlannedRun]) -> None:
        try:
            self.outbox.send(message)
        except OSError:  # a broken pipe: the worker is gone
            raise FmnistError(_death(self, planned)) from None

    def hand(self, task: _Task | None, planned: list[PlannedRun]) -> None:
        """Give the worker its next run, or None: then it finishes, and there is nothing more to hear from it."""
        self.task = task
        self.send(task, planned)
        if task is None:
            self.inbox.close()

    def stop(self) -> None:
        """End the process by its id: SIGTERM, then SIGKILL after STOP_SECONDS; close the pipes."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.inbox.close()
        self.outbox.close()


class ProcessExecutor:
    """An Executor that trains up to `jobs` planned runs at once, each in a worker process; each finished
    epoch is a line of the session's notifications (the live bars need the run in this process)."""

    def __init__(self, jobs: int, threads_per_run: int | None = None):
        self.jobs = check_jobs(jobs)
        self.threads = threads_per_run or threads_per_job(jobs)
        self.pids: list[int] = []  # the worker processes of the last call, for whoever checks they ended

    def __call__(self, planned: list[PlannedRun], session: Session) -> list[RunResultsFile]:
        dataset = session.dataset
        run_dirs = [prepare_run_dir(session.folder / run.run_name) for run in planned]  # refuse a bad folder first
        waiting = [_Task(index, run.config, run_dir) for index, (run, run_dir) in enumerate(zip(planned, run_dirs))]
        waiting.reverse()  # handed out from the end: in plan order
        count = min(self.jobs, len(planned))
        session.notify(f"{len(planned)} run(s), {count} at a time, {self.threads} CPU thread(s) each")
        results: dict[int, RunResultsFile] = {}  # plan index -> its results.json, as runs finish
        workers: list[_Worker] = []
        try:
            for _ in range(count):  # all start (import torch, fmnist) at once, then each gets the data
                workers.append(_Worker())
            self.pids = [worker.process.pid for worker in workers]
            for worker in workers:
                worker.send((dataset, self.threads), planned)
            remaining = len(planned)
            while remaining:
                for inbox in wait([w.inbox for w in workers if not w.inbox.closed]):
                    worker = next(w for w in workers if w.inbox is inbox)
                    try:
                        event = inbox.recv()
                    except EOFError:
                        raise FmnistError(_death(worker, planned)) from None
                    kind, index = event[0], event[1]
                    if kind == "ready":
                        worker.hand(waiting.pop() if waiting else None, planned)
                    elif kind == "epoch":
                        run = planned[index]
                        session.notify(epoch_line(run.run_name, event[2], run.config.epochs, event[3]))
                    elif kind == "error":
                        raise FmnistError(f"{planned[index].run_name}: {event[2]}")
                    else:  # done
                        run = planned[index]
                        session.announce(run.run_name, result_from_dir(run_dirs[index], run.config))
                        results[index] = read_results(run_dirs[index])
                        remaining -= 1
                        worker.hand(waiting.pop() if waiting else None, planned)
        finally:
            for worker in workers:
                worker.stop()
        return [results[index] for index in range(len(planned))]


def _death(worker: _Worker, planned: list[PlannedRun]) -> str:
    """The one line for a worker whose pipe closed: which run it took with it, and its exit code."""
    try:
        code: int | str = worker.process.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:  # its pipe closed, yet it runs: stop() ends it
        code = "none yet"
    if worker.task is None:
        return f"a --jobs worker process ended before it could train (exit code {code}); its messages are above"
    return (f"{planned[worker.task.index].run_name}: its worker process died (exit code {code}) before the run "
            "finished; its finished epochs are in its run directory")  # fmt: skip
