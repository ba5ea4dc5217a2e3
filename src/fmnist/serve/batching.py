"""Work kept off the event loop: a bounded pool for request bodies, one thread for the model.

The loop thread only moves bytes and routes requests, so /health answers in milliseconds
whatever else is running. Parsing, decoding and preprocessing a body runs in `DecodePool`
(a few threads: Pillow, zlib and numpy release the GIL while they work); a single inference
thread runs the model (ONNX Runtime and PyTorch release the GIL too), so on a 2-core machine
both cores work. Whatever requests arrive while the model is busy are run together
as the next batch ("continuous batching"): no timer, so an idle server answers at once.

All model work, Grad-CAM included, goes through the one thread: the predictor is not
thread-safe, and Grad-CAM's hooks must not fire on another request's forward pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from fmnist.serve.limits import DECODE_QUEUE, DECODE_WORKERS, MAX_BATCH


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
    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], max_batch: int = MAX_BATCH):
        self.infer = infer
        self.max_batch = max_batch
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fmnist-infer")
        self.pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self.busy = False

    async def run(self, images: np.ndarray) -> np.ndarray:
        """Model output for uint8 (N,28,28) images, computed in the inference thread."""
        future = asyncio.get_running_loop().create_future()
        self.pending.append((images, future))
        if not self.busy:
            self._start()
        return await future

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run other model work (Grad-CAM) in the inference thread, between batches."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    def _start(self) -> None:
        # Take requests until max_batch images (always at least one request).
        taken, count = 0, 0
        while taken < len(self.pending) and (taken == 0 or count + len(self.pending[taken][0]) <= self.max_batch):
            count += len(self.pending[taken][0])
            taken += 1
        batch, self.pending = self.pending[:taken], self.pending[taken:]
        self.busy = True
        images = batch[0][0] if len(batch) == 1 else np.concatenate([imgs for imgs, _ in batch])
        work = asyncio.get_running_loop().run_in_executor(self.executor, self.infer, images)
        work.add_done_callback(lambda done: self._finish(batch, done))

    def _finish(self, batch: list[tuple[np.ndarray, asyncio.Future]], done: asyncio.Future) -> None:
        self.busy = False
        error = done.exception()
        start = 0
        for images, future in batch:
            if future.cancelled():  # the client went away; its share is simply dropped
                start += len(images)
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(done.result()[start : start + len(images)])
            start += len(images)
        if self.pending:
            self._start()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
