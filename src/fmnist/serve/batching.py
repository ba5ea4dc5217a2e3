"""One inference thread, fed in batches: the event loop never waits on the model.

The loop thread parses HTTP, decodes and preprocesses images; a single worker thread runs
the model (ONNX Runtime and PyTorch release the GIL while they compute), so on a 2-core
machine both cores work. Whatever requests arrive while the model is busy are run together
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

MAX_BATCH_IMAGES = 256


class InferenceQueue:
    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], max_batch: int = MAX_BATCH_IMAGES):
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
