"""Losing a Ray cluster's head: one line and a clean exit, not Ray's fatal log a minute later.

A driver whose head (the GCS) stops answering cannot go on. Ray's core worker waits
RAY_gcs_rpc_server_reconnect_timeout_s (60 s unless set) for a head to come back, which is what a
head with GCS fault tolerance does, then ends the process from C++ with a log line and no chance
for Python to say anything. So while fmnist is joined to a cluster, a thread knocks on the head's
port; when it has not answered for a little less than Ray's own wait, the thread ends the command
itself with one line saying what is saved and how to carry on. A head that comes back in time
changes nothing.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable

RECONNECT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"
RAY_RECONNECT_DEFAULT_S = 60.0  # Ray's default for RECONNECT_ENV
PROBE_EVERY_S = 0.5
PROBE_TIMEOUT_S = 1.0
LOST_EXIT = 1


def give_up_after() -> float:
    """Seconds without an answer before fmnist ends the command: Ray's wait, less a margin that
    covers the probe's own delay (Ray may notice the loss a little earlier than the probe)."""
    try:
        ray_wait = float(os.environ.get(RECONNECT_ENV, RAY_RECONNECT_DEFAULT_S))
    except ValueError:
        ray_wait = RAY_RECONNECT_DEFAULT_S
    margin = max(3 * (PROBE_EVERY_S + PROBE_TIMEOUT_S), 0.1 * ray_wait)
    return max(PROBE_EVERY_S, ray_wait - margin)


def answers(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


class HeadWatch:
    """Ends the process with `error: MESSAGE` (exit code 1) once the head at `address` stays silent."""

    def __init__(self, address: str, message: Callable[[float], str]):
        self.address = address
        self.message = message  # seconds waited -> the line to print
        self.limit = give_up_after()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="fmnist-ray-head-watch", daemon=True)

    def start(self) -> HeadWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=PROBE_EVERY_S + PROBE_TIMEOUT_S + 1)

    def _watch(self) -> None:
        silent_since: float | None = None
        while not self._stop.wait(PROBE_EVERY_S):
            if answers(self.address):
                silent_since = None
                continue
            now = time.monotonic()
            silent_since = silent_since or now
            if now - silent_since >= self.limit and not self._stop.is_set():
                self._give_up(now - silent_since)

    def _give_up(self, waited: float) -> None:
        # os._exit: the main thread is stuck inside Ray, and Ray would end the process anyway.
        try:
            sys.stdout.flush()
            sys.stderr.write(f"error: {self.message(waited)}\n")
            sys.stderr.flush()
        finally:
            os._exit(LOST_EXIT)
