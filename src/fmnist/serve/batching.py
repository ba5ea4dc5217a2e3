"""Where request work runs: on the event loop when it is small, in threads when it is not.

Small work is done on the loop thread itself: a thread hand-off costs more than decoding one
small image or running the model on a few (each hand-off passes the GIL between threads and
switches context, which was a third of the server's CPU when every request took three).
Heavy work goes to threads, so /health answers in milliseconds whatever else is running:
large bodies are parsed, decoded and preprocessed in `DecodePool` (a few threads: Pillow,
zlib and numpy release the GIL while they work), and large batches run in one inference
thread (ONNX Runtime and PyTorch release the GIL too), so on a 2-core machine both cores work.

`InferenceQueue` batches whatever requests are waiting when the model becomes free
("continuous batching"): no timer, so an idle server answers at once. A batch runs on the
loop when the model's measured time per image says it will be short, else in the thread.

The predictor is not thread-safe, and Grad-CAM's hooks must not fire on another request's
forward pass, so the model has one user at a time: the loop only runs it while the thread
is idle, and all other model work (Grad-CAM) goes through the thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from fmnist.serve.limits import DECODE_QUEUE, DECODE_WORKERS, INLINE_INFER_S, MAX_BATCH


class ServerBusy(Exception):
    """More requests are waiting for the decode pool than its queue holds."""


class DecodePool:
    """A few worker threads with a bounded queue: beyond `workers + queue` jobs, refuse (503).

    Threads rather than processes: the heavy parts (zlib, libjpeg, Pillow's resampling, numpy)
    run without the GIL, and a thread hands over a 5 MB body without copying it.
    """

    def __init__(self, workers: int = DECODE_WORKERS, queue: int = DECODE_QUEUE):
        self.capacity = workers + queue
        self.admitted = 0
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fmnist-decode")

    async def run(self, fn: Callable[..., Any], *args: Any, admit: bool = True) -> Any:
        """fn(*args) in a worker thread. admit=False skips the queue check: finishing a request
        already admitted (serialising its answer) must not be refused after all its work."""
        if admit and self.admitted >= self.capacity:
            raise ServerBusy(f"server busy: {self.admitted} requests are being decoded or waiting; retry shortly")
        self.admitted += 1
        job = asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        # Count the job until its thread is done with it, even if the request is abandoned.
        job.add_done_callback(self._release)
        return await asyncio.shield(job)

    def _release(self, job: asyncio.Future) -> None:
        self.admitted -= 1
        if not job.cancelled():
            job.exception()  # marks it seen: an abandoned job's error is not logged as "never retrieved"

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class InferenceQueue:
    """Model calls for concurrent requests, batched; run on the loop when short, else in one thread."""

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], max_batch: int = MAX_BATCH,
                 inline_s: float = INLINE_INFER_S):  # fmt: skip
        self.infer = infer
        self.max_batch = max_batch
        self.inline_s = inline_s
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fmnist-infer")
        # (uint8 images, future) for model inputs; (callable, future) for other model work.
        self.pending: list[tuple[Any, asyncio.Future]] = []
        self.busy = False  # the thread holds the model
        self.scheduled = False
        self.seconds_per_image = float("inf")  # until measured: the first batch runs in the thread

    def warm_up(self, images: np.ndarray) -> None:
        """Run the model once (first runs are slow) and measure its time per image."""
        self.infer(images)
        start = time.perf_counter()
        self.infer(images)
        self.seconds_per_image = (time.perf_counter() - start) / len(images)

    async def run(self, images: np.ndarray) -> np.ndarray:
        """Model output for uint8 (N,28,28) images, batched with other requests'."""
        return await self._submit(images)

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run other model work (Grad-CAM) in the inference thread, between batches."""
        return await self._submit(fn)

    def _submit(self, job: Any) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((job, future))
        self._schedule()
        return future

    def _schedule(self) -> None:
        # On the next loop turn, not now: requests that arrived together reach the queue first and share a batch.
        if not self.busy and not self.scheduled and self.pending:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._next)

    def _next(self) -> None:
        self.scheduled = False
        if self.busy or not self.pending:
            return
        job, future = self.pending[0]
        if callable(job):
            self.pending.pop(0)
            self._in_thread(job, [(None, future)])
            return
        # Take requests until max_batch images (always at least one request).
        taken, count = 0, 0
        while taken < len(self.pending) and not callable(self.pending[taken][0]):
            size = len(self.pending[taken][0])
            if taken and count + size > self.max_batch:
                break
            count += size
            taken += 1
        batch, self.pending = self.pending[:taken], self.pending[taken:]
        images = batch[0][0] if len(batch) == 1 else np.concatenate([imgs for imgs, _ in batch])
        if count * self.seconds_per_image <= self.inline_s:
            start = time.perf_counter()
            try:
                outcome: Any = self.infer(images)
            except Exception as exc:  # noqa: BLE001 - handed to the requests, which report it
                outcome = exc
            self._measure(count, time.perf_counter() - start)
            self._deliver(batch, outcome)
            self._schedule()
        else:
            self._in_thread(lambda: self._timed(images), batch)

    def _timed(self, images: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = self.infer(images)
        self._measure(len(images), time.perf_counter() - start)  # a float store: safe from the thread
        return out

    def _measure(self, count: int, seconds: float) -> None:
        # A moving average, so a busy moment does not decide alone where the next batches run.
        per_image = seconds / count
        known = self.seconds_per_image != float("inf")
        self.seconds_per_image = 0.8 * self.seconds_per_image + 0.2 * per_image if known else per_image

    def _in_thread(self, fn: Callable[[], Any], batch: list[tuple[Any, asyncio.Future]]) -> None:
        self.busy = True
        work = asyncio.get_running_loop().run_in_executor(self.executor, fn)
        work.add_done_callback(lambda done: self._thread_done(batch, done))

    def _thread_done(self, batch: list[tuple[Any, asyncio.Future]], done: asyncio.Future) -> None:
        self.busy = False
        if done.cancelled():  # the server is closing
            outcome: Any = asyncio.CancelledError()
        else:
            outcome = done.exception() or done.result()
        self._deliver(batch, outcome)
        self._schedule()

    @staticmethod
    def _deliver(batch: list[tuple[Any, asyncio.Future]], outcome: Any) -> None:
        start = 0
        for job, future in batch:
            size = 0 if job is None else len(job)
            if future.cancelled():  # the client went away; its share is simply dropped
                pass
            elif isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome if job is None else outcome[start : start + size])
            start += size

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
