"""`fmnist serve` under the limits: the heaviest request allowed, the decode pool's queue, oversized
bodies before `100 Continue`, idle and half-sent requests, clients that leave mid-upload.

A real server on a loopback port, driven with httpx and raw sockets.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fmnist.serve.limits import DEFAULT_MAX_BODY_MB, INLINE_BODY_BYTES, INLINE_PIXELS, MAX_BATCH, PIXEL_BUDGET
from test_predict import item_image, png_bytes, tiny_run_dir
from test_serve import multipart, start_server, stop_server

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    """One server process with a 1-second timeout, for raw-socket tests; yields (url, port, log path).

    One worker: what is checked here (a busy event loop, a full decode queue) is per process.
    """
    proc, url = start_server(tiny_run_dir(tmp_path_factory)[0], "--backend", "onnx", "--timeout", "1", "--workers", "1")
    yield url, int(url.rsplit(":", 1)[1]), proc.log_path
    assert "Traceback" not in stop_server(proc)


def worst_case_batch() -> list[tuple[str, tuple[str, bytes, str]]]:
    """The heaviest request the limits allow: MAX_BATCH images that together fill the pixel budget."""
    side = math.isqrt(PIXEL_BUDGET // MAX_BATCH)
    image = np.full((side, side, 3), 245, dtype=np.uint8)
    image[side // 8 : -side // 8, side // 3 : 2 * side // 3] = (40, 50, 90)  # dark trousers-ish block on white
    data = png_bytes(image)  # a few KB: the whole batch is far under the body limit
    return [("files", (f"item{i}.png", data, "image/png")) for i in range(MAX_BATCH)]


def raw_exchange(
    port: int, data: bytes, wait: float = 10.0, pause: float = 0.0, chunks: int = 1
) -> tuple[float, bytes]:
    """Send `data` (in `chunks` pieces, `pause` s apart) on a fresh connection; read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(wait)
        start = time.monotonic()
        step = math.ceil(len(data) / chunks) if data else 0
        try:
            for i in range(chunks):
                if data:
                    sock.sendall(data[i * step : (i + 1) * step])
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server gave up on us: read what it said
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return time.monotonic() - start, received


# -- the pixel budget, the decode pool, the heaviest request ------------------------------------------------------


def health_while(url: str, send) -> tuple[list[float], object]:
    """/health latencies (s) measured every 10 ms while `send()` runs in another thread, and what it returned."""
    latencies = []
    with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=url, timeout=10) as client:
        work = pool.submit(send)
        while not work.done():
            start = time.perf_counter()
            assert client.get("/health").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.01)
        return latencies, work.result()


def test_heaviest_allowed_batch_leaves_health_fast(edge):
    """MAX_BATCH images filling the pixel budget: answered, while /health keeps answering in <= 100 ms (p99)."""
    url, _, _ = edge
    files = worst_case_batch()
    assert sum(len(f[1][1]) for f in files) < DEFAULT_MAX_BODY_MB * 1_000_000
    latencies, reply = health_while(url, lambda: httpx.post(f"{url}/predict/batch", files=files, timeout=300))
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["predictions"]) == MAX_BATCH
    assert len(latencies) >= 20, "the batch finished too fast to measure anything"
    p99 = float(np.percentile(latencies, 99))
    assert p99 <= 0.100, f"/health p99 {1000 * p99:.0f} ms during the batch (max {1000 * max(latencies):.0f} ms)"
    # One pixel more per image is over the budget: refused before decoding, so at once.
    side = math.isqrt(PIXEL_BUDGET // MAX_BATCH)
    over = png_bytes(item_image(side, side + 1, box=(50, 450, 150, 350)))
    start = time.perf_counter()
    reply = httpx.post(f"{url}/predict/batch", files=[("files", ("x.png", over, "image/png"))] * MAX_BATCH, timeout=60)
    assert reply.status_code == 413 and f"{PIXEL_BUDGET:,}" in reply.json()["detail"]
    assert time.perf_counter() - start < 5


def test_small_body_holding_many_pixels_is_decoded_off_the_loop(edge):
    """A few-KB PNG can declare tens of megapixels: the pixel count, not the body's size, keeps it off the loop."""
    url, _, _ = edge
    side = 7000  # 49 MP: within the pixel budget and Pillow's bomb limit; ~0.3 s to decode and preprocess
    image = np.full((side, side), 250, dtype=np.uint8)
    image[side // 4 : -side // 4, side // 3 : 2 * side // 3] = 30
    data = png_bytes(image)
    assert len(data) < INLINE_BODY_BYTES and side * side > INLINE_PIXELS  # small enough to be parsed on the loop
    latencies, reply = health_while(url, lambda: httpx.post(f"{url}/predict", content=data,
                                                            headers={"content-type": "image/png"}, timeout=120))  # fmt: skip
    assert reply.status_code == 200, reply.text
    p99 = float(np.percentile(latencies, 99))  # first: a blocked loop also means few measurements
    assert p99 <= 0.100, f"/health p99 {1000 * p99:.0f} ms during the decode (max {1000 * max(latencies):.0f} ms)"
    assert len(latencies) >= 10, "the image was decoded too fast to measure anything"


def test_decode_pool_refuses_beyond_its_queue():
    from fmnist.serve.batching import DecodePool, ServerBusy

    release = threading.Event()

    async def scenario():
        pool = DecodePool(workers=1, queue=1)
        running = [asyncio.ensure_future(pool.run(release.wait)) for _ in range(2)]  # one working, one waiting
        await asyncio.sleep(0.05)
        with pytest.raises(ServerBusy):
            await pool.run(lambda: None)
        release.set()
        await asyncio.gather(*running)
        assert await pool.run(lambda: 42) == 42 and pool.admitted == 0
        pool.close()

    asyncio.run(scenario())


def test_inference_runs_short_batches_on_the_loop_long_ones_in_the_thread_and_batches_waiting_requests():
    from fmnist.serve.batching import InferenceQueue

    calls: list[tuple[str, int]] = []
    delay = {"s": 0.0}

    def infer(images: np.ndarray) -> np.ndarray:
        calls.append((threading.current_thread().name, len(images)))
        time.sleep(delay["s"])
        return images.reshape(len(images), -1)[:, :2].astype(np.float32)

    async def scenario():
        queue = InferenceQueue(infer, inline_s=0.05)
        one = np.zeros((1, 28, 28), np.uint8)
        queue.warm_up(one)  # fast: short batches run where they are asked for
        calls.clear()
        images = [np.full((1, 28, 28), i, np.uint8) for i in range(5)]
        answers = await asyncio.gather(*(queue.run(x) for x in images))
        assert [int(a[0, 0]) for a in answers] == list(range(5))  # each request gets its own rows back
        assert calls == [(threading.current_thread().name, 5)]  # one batch, on the loop's own thread
        delay["s"] = 0.3
        queue.warm_up(one)  # now each image costs 0.3 s: batches go to the thread and the loop stays free
        calls.clear()
        ticks = []

        async def tick():
            for _ in range(20):
                start = time.perf_counter()
                await asyncio.sleep(0.01)
                ticks.append(time.perf_counter() - start)

        await asyncio.gather(queue.run(one), tick())
        assert calls[0][0].startswith("fmnist-infer") and max(ticks) < 0.2, (calls, max(ticks))
        queue.close()

    asyncio.run(scenario())


# -- connections: 100-continue, timeouts, clients that go away ------------------------------------------------


def test_oversized_body_is_refused_before_100_continue(edge):
    _, port, _ = edge
    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n")  # fmt: skip
    limit = int(DEFAULT_MAX_BODY_MB * 1_000_000)
    for declared in (limit + 1, 50 * 10**9):
        elapsed, answer = raw_exchange(port, head % declared)
        assert answer.split(b"\r\n", 1)[0] == b"HTTP/1.1 413 Request Entity Too Large", answer[:200]
        assert b"100 Continue" not in answer and f"{limit:,}-byte limit".encode() in answer and elapsed < 3
    _, answer = raw_exchange(port, head % 10 + b"0123456789")  # within the limit: 100 Continue, then the answer
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 415") or answer.startswith(b"HTTP/1.1 415")


def test_idle_and_half_sent_requests_time_out(edge):
    url, port, log_path = edge
    elapsed, answer = raw_exchange(port, b"")  # connects, says nothing
    assert answer == b"" and 0.8 < elapsed < 4
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
    for partial in (b"POST /predict HTTP/1.1\r\nHost: x\r\n", head + b"0123456789"):  # half the headers, half the body
        elapsed, answer = raw_exchange(port, partial)
        assert answer.startswith(b"HTTP/1.1 408 ") and b"within 1 s" in answer and 0.8 < elapsed < 4, answer
    elapsed, answer = raw_exchange(port, head[:60], pause=0.4, chunks=6)  # headers dripping in: the clock keeps running
    assert answer.startswith(b"HTTP/1.1 408 ") and elapsed < 4
    # A slow but steady body is not cut off: its clock restarts with each chunk.
    elapsed, answer = raw_exchange(port, head + b"x" * 1000, pause=0.5, chunks=5)
    assert answer.startswith(b"HTTP/1.1 415 "), answer[:200]
    assert httpx.get(f"{url}/health").status_code == 200


def test_client_leaving_mid_upload_is_quiet(edge):
    url, port, log_path = edge
    before = log_path.read_text()
    body, kind = multipart("big.png", os.urandom(2_000_000))
    for content_type, payload in (("image/png", os.urandom(2_000_000)), (kind, body)):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /predict/batch HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
                         % (content_type.encode(), len(payload)) + payload[: len(payload) // 3])  # fmt: skip
            time.sleep(0.2)
    time.sleep(0.5)
    assert httpx.get(f"{url}/health").status_code == 200
    added = log_path.read_text()[len(before) :]
    assert "Traceback" not in added and "500" not in added and added.count("\n") <= 2, added
