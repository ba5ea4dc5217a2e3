"""`fmnist serve --workers N`: N server processes on one port.

One Python process serves on one core at a time (the GIL), so a machine with several cores
runs several: the parent binds the port (so a busy port or a bad host is one line before any
model loads), starts N workers that each load their own model and accept connections on that
port, and then only supervises. Each worker is a whole server, with the limits, /health and
web page of a single-process one. On Linux each worker listens on a socket of its own
(SO_REUSEPORT) and the kernel spreads connections evenly between them, while the parent's
socket only holds the port; elsewhere the workers accept from the parent's socket
(fmnist.serve.server.BALANCED_PORT_SHARING says why).

The parent ends its workers when it is asked to stop (SIGTERM, SIGINT/Ctrl-C) and replaces a
worker that dies. A worker also ends by itself if the parent dies without stopping it.
Workers are fresh interpreters (not forks): nothing of the parent's state, threads or
imported libraries is shared, and a worker's failure to start (a bad run directory, say) is
reported by the parent as the one line the worker gave.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from fmnist.errors import INTERRUPTED, FmnistError, first_line
from fmnist.serve.limits import MAX_DEFAULT_WORKERS

# How long workers get to finish their requests after SIGTERM before they are killed.
STOP_GRACE_S = 10.0


class WorkerSettings(TypedDict):
    """What each worker process serves with (`fmnist serve`'s options); it travels as JSON on the worker's command line."""

    run_dir: str
    backend: str
    threads: int
    precision: str
    max_body_bytes: int
    timeout: float
    access_log: bool
    ood: str  # off, warn or reject: what to do with unknown images
    own_socket: bool  # listen on a socket of its own (the kernel balances them) instead of the shared one
    parent: NotRequired[int]  # the parent's pid, added by run_workers: a worker ends with it


def default_workers() -> int:
    """One worker per CPU core this process may run on, at most MAX_DEFAULT_WORKERS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_WORKERS))


class _Stop(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _Worker:
    def __init__(self, sock: socket.socket, settings: WorkerSettings):
        read_fd, write_fd = os.pipe()
        cmd = [sys.executable, "-m", "fmnist.serve.workers", str(sock.fileno()), str(write_fd), json.dumps(settings)]
        try:
            self.proc = subprocess.Popen(cmd, pass_fds=(sock.fileno(), write_fd))
        finally:
            os.close(write_fd)
        self.ready = os.fdopen(read_fd)

    def wait_ready(self) -> str:
        """The model's name once this worker serves; FmnistError with the worker's own line if it cannot."""
        with self.ready:
            message = self.ready.read().strip()
        if message.startswith("ready "):
            return message.removeprefix("ready ")
        if message.startswith("error "):
            _, code, line = message.split(" ", 2)
            error = FmnistError(line)
            error.exit_code = int(code)
            raise error
        self.proc.wait()
        raise FmnistError(f"a server worker ended while starting (exit status {self.proc.returncode})")


def run_workers(sock: socket.socket, workers: int, settings: WorkerSettings, announce: Callable[[str], None]) -> int:
    """Serve with `workers` processes until SIGTERM/SIGINT; returns the exit code. `announce(model)` once all serve."""
    stopping: list[int] = []

    def stop(signum: int, _frame: Any) -> None:
        if not stopping:  # a second signal while stopping changes nothing
            stopping.append(signum)
            raise _Stop(signum)

    # Set here, not inherited: a shell that started us in the background may have set SIGINT to be ignored.
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    running: dict[int, _Worker] = {}
    settings = {**settings, "parent": os.getpid()}
    try:
        started = [_Worker(sock, settings) for _ in range(workers)]
        running.update((w.proc.pid, w) for w in started)
        model = ""
        for worker in started:
            model = worker.wait_ready()
        announce(model)
        while True:
            pid, status = os.wait()
            if running.pop(pid, None) is None:
                continue
            print(f"server worker {pid} ended (status {os.waitstatus_to_exitcode(status)}); starting another",
                  file=sys.stderr, flush=True)  # fmt: skip
            replacement = _Worker(sock, settings)
            running[replacement.proc.pid] = replacement
            replacement.wait_ready()
    except _Stop as stopped:
        return INTERRUPTED if stopped.signum == signal.SIGINT else 0
    finally:
        stopping.append(0)
        _stop_all([w.proc for w in running.values()])
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _end_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM when the parent dies (Linux); elsewhere the parent's own stop must do."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above
        raise SystemExit(0)


def _worker(sock_fd: int, ready_fd: int, settings: WorkerSettings) -> int:
    # Until the server runs (it sets its own handlers), stopping is the parent's call: it sends SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _end_with_parent(settings["parent"])
    with os.fdopen(ready_fd, "w") as ready:
        try:
            from fmnist.serve.app import create_app
            from fmnist.serve.server import run_server

            sock = socket.socket(fileno=sock_fd)
            app = create_app(Path(settings["run_dir"]), backend=settings["backend"], threads=settings["threads"],
                             precision=settings["precision"], max_body_bytes=settings["max_body_bytes"],
                             timeout_s=settings["timeout"], ood=settings["ood"])  # fmt: skip
            if settings["own_socket"]:
                # The parent's socket only holds the port: listen on one of our own beside it, once the
                # model is loaded, so that no connection waits in our queue while it loads.
                from fmnist.serve.server import bind_socket

                host, port = sock.getsockname()[:2]
                sock.close()
                sock = bind_socket(host, port, allow_remote=True, reuse_port=True)
        except FmnistError as exc:
            ready.write(f"error {exc.exit_code} {first_line(exc)}")
            return exc.exit_code
        except Exception as exc:  # a bug: one line, like the CLI's
            ready.write(f"error 1 internal error: {type(exc).__name__}: {first_line(exc)}")
            return 1
        ready.write(f"ready {app.state.predictor.meta['model']}")
    run_server(app, sock, access_log=settings["access_log"], timeout=settings["timeout"])
    return 0


if __name__ == "__main__":
    sys.exit(_worker(int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])))
