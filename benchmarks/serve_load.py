"""Load test for `fmnist serve`: N single-image requests at concurrency C over loopback.

    python benchmarks/serve_load.py [--run-dir RUN] [--backend onnx] [--requests 10000]
                                    [--concurrency 32] [--payload multipart|raw|json] [--quick]

Starts the server as a subprocess on 127.0.0.1 (a free port), waits for /health, warms up,
then drives it with a small raw-asyncio HTTP/1.1 client: C keep-alive connections, each
sending its next request as soon as the previous answer arrives. A raw client because the
client shares the machine's cores with the server: a heavyweight client would measure
itself. Prints requests/s, latency percentiles, errors, and CPU seconds per request spent by
server and client, and checks the targets (0 errors, >= 500 req/s, p99 <= 100 ms).

Then (unless --no-heavy) it sends the heaviest request the server's limits allow, a batch of
MAX_BATCH PNGs that together fill the per-request pixel budget, and meanwhile asks for /health
every 10 ms on another connection: /health must keep answering within 100 ms (p99), because
decoding runs in worker threads, not on the event loop.

Without --run-dir the model is fastcnn with untrained (random) weights: throughput does not
depend on the weight values. Bounded: at most --requests requests and --time-limit seconds,
loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

TARGET_RPS, TARGET_P99_MS = 500, 100.0
TARGET_HEALTH_P99_MS = 100.0


def untrained_run(folder: Path, model: str) -> Path:
    """A run directory holding `model` with random weights (throughput needs no training)."""
    from fmnist.constants import FMNIST_MEAN, FMNIST_STD
    from fmnist.inference.checkpoint import CheckpointMeta, save_checkpoint
    from fmnist.models.registry import count_parameters, create_model
    from fmnist.training.recipes import model_settings

    net = create_model(model)
    meta = CheckpointMeta(model=model, model_args=dict(net.model_args), mean=FMNIST_MEAN, std=FMNIST_STD,
                          tta=model_settings(model).get("tta", "none"), params=count_parameters(net))  # fmt: skip
    save_checkpoint(folder, net, meta)
    return folder


def sample_image() -> np.ndarray:
    """A Fashion-MNIST test image when FMNIST_DATA is set, else a synthetic 'trouser'."""
    if os.environ.get("FMNIST_DATA"):
        from fmnist.data.sources import resolve_dataset

        return resolve_dataset(allow_download=False).test_images[1]
    image = np.zeros((28, 28), dtype=np.uint8)
    image[2:26, 8:13] = 200
    image[2:26, 15:20] = 200
    image[2:6, 8:20] = 200
    return image


def request_bytes(payload: str, host: str, port: int) -> bytes:
    from PIL import Image

    image = sample_image()
    if payload == "json":
        body, kind = json.dumps({"pixels": image.tolist()}).encode(), "application/json"
    else:
        buf = io.BytesIO()
        # A "photo": the item dark on white, 4x larger, RGB, so preprocessing does real work.
        Image.fromarray(255 - image).resize((112, 112)).convert("RGB").save(buf, "PNG")
        png = buf.getvalue()
        if payload == "raw":
            body, kind = png, "image/png"
        else:
            boundary = "fmnistbenchboundary"
            body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"item.png\"\r\n"
                    f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
            kind = f"multipart/form-data; boundary={boundary}"
    head = (f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    if match is None:
        raise ValueError("response without Content-Length")
    await reader.readexactly(int(match.group(1)))
    return status


async def drive(host: str, port: int, request: bytes, total: int, concurrency: int, deadline: float):
    latencies: list[float] = []
    errors: dict[str, int] = {}
    issued = 0

    async def connection() -> None:
        nonlocal issued
        reader = writer = None
        while issued < total and time.perf_counter() < deadline:
            issued += 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                start = time.perf_counter()
                writer.write(request)
                status = await read_response(reader)
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return latencies, errors, issued


def heavy_batch_request(host: str, port: int) -> bytes:
    """POST /predict/batch with MAX_BATCH PNGs of the largest size the pixel budget allows each."""
    from PIL import Image

    from fmnist.serve.limits import MAX_BATCH, PIXEL_BUDGET

    side = math.isqrt(PIXEL_BUDGET // MAX_BATCH)
    image = np.full((side, side, 3), 245, dtype=np.uint8)
    image[side // 8 : -side // 8, side // 3 : 2 * side // 3] = (40, 50, 90)  # a dark item on white: compresses well
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    boundary = "fmnistheavyboundary"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"item.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + buf.getvalue() + b"\r\n"  # fmt: skip
    body = part * MAX_BATCH + f"--{boundary}--\r\n".encode()
    head = (f"POST /predict/batch HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n")  # fmt: skip
    return head.encode() + body


async def health_during(host: str, port: int, request: bytes) -> tuple[float, int, list[float]]:
    """(seconds the request took, its status, /health latencies measured meanwhile)."""
    health = f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    heavy_reader, heavy_writer = await asyncio.open_connection(host, port)
    reader, writer = await asyncio.open_connection(host, port)
    start = time.perf_counter()
    heavy_writer.write(request)
    answer = asyncio.ensure_future(read_response(heavy_reader))
    latencies = []
    while not answer.done():
        sent = time.perf_counter()
        writer.write(health)
        await read_response(reader)
        latencies.append(time.perf_counter() - sent)
        await asyncio.sleep(0.01)
    status = await answer
    elapsed = time.perf_counter() - start
    heavy_writer.close()
    writer.close()
    return elapsed, status, latencies


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(run_dir: Path, backend: str, threads: int) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "fmnist", "serve", str(run_dir), "--host", "127.0.0.1", "--port", "0",
           "--backend", backend, "--threads", str(threads)]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    line = proc.stdout.readline()  # "serving MODEL (BACKEND) on http://127.0.0.1:PORT ..."
    match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if match is None:
        proc.kill()
        raise SystemExit(f"server did not start: {line.strip()} {proc.stdout.read()[:500]}")
    port = int(match.group(1))
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not answer /health")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, help="Run to serve [default: untrained fastcnn]")
    parser.add_argument("--model", default="fastcnn", help="Model for the untrained run [fastcnn]")
    parser.add_argument("--backend", default="onnx", choices=("onnx", "torch"))
    parser.add_argument("--threads", type=int, default=1, help="Server inference threads [1]")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--payload", default="multipart", choices=("multipart", "raw", "json"))
    parser.add_argument("--time-limit", type=float, default=120.0, help="Stop sending after this many seconds")
    parser.add_argument("--quick", action="store_true", help="1,000 requests (smoke run)")
    parser.add_argument("--no-heavy", action="store_true", help="Skip the heaviest-batch /health check")
    args = parser.parse_args()
    total = 1_000 if args.quick else args.requests
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    with tempfile.TemporaryDirectory(prefix="fmnist-load-") as tmp:
        run_dir = args.run_dir or untrained_run(Path(tmp) / "run", args.model)
        proc, port = start_server(run_dir, args.backend, args.threads)
        try:
            request = request_bytes(args.payload, "127.0.0.1", port)
            asyncio.run(drive("127.0.0.1", port, request, 200, 8, time.perf_counter() + 30))  # warm-up
            server_cpu0, client_cpu0 = process_cpu_seconds(proc.pid), time.process_time()
            start = time.perf_counter()
            latencies, errors, issued = asyncio.run(
                drive("127.0.0.1", port, request, total, args.concurrency, start + args.time_limit)
            )
            elapsed = time.perf_counter() - start
            server_cpu = process_cpu_seconds(proc.pid) - server_cpu0
            client_cpu = time.process_time() - client_cpu0
            if not args.no_heavy:
                heavy = heavy_batch_request("127.0.0.1", port)
                heavy_result = asyncio.run(health_during("127.0.0.1", port, heavy))
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    done = len(latencies)
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    rps = done / elapsed
    n_errors = sum(errors.values())
    unsent = total - issued
    print(f"serve load: {args.run_dir or f'{args.model} (untrained weights)'}, backend {args.backend}, "
          f"payload {args.payload} ({len(request)} bytes), {args.concurrency} connections, {os.cpu_count()} CPUs")  # fmt: skip
    print(
        f"  requests   {done:,} answered of {total:,} in {elapsed:.2f} s"
        + (f"  ({unsent:,} not sent: time limit)" if unsent else "")
    )
    print(f"  throughput {rps:,.0f} requests/s")
    print(f"  latency    p50 {np.percentile(ms, 50):.1f} ms   p90 {np.percentile(ms, 90):.1f} ms   "
          f"p99 {np.percentile(ms, 99):.1f} ms   max {ms.max():.1f} ms")  # fmt: skip
    print(f"  errors     {n_errors}" + (f"  {errors}" if errors else ""))
    print(
        f"  CPU/request  server {1000 * server_cpu / max(done, 1):.2f} ms   client {1000 * client_cpu / max(done, 1):.2f} ms"
    )
    checks = [("0 errors", n_errors == 0 and unsent == 0), (f">= {TARGET_RPS} req/s", rps >= TARGET_RPS),
              (f"p99 <= {TARGET_P99_MS:.0f} ms", np.percentile(ms, 99) <= TARGET_P99_MS)]  # fmt: skip
    if not args.no_heavy:
        seconds, status, health = heavy_result
        health_ms = np.array(health) * 1000 if health else np.zeros(1)
        health_p99 = float(np.percentile(health_ms, 99))
        print(f"  heaviest batch  HTTP {status} in {seconds:.2f} s ({len(heavy) / 1e6:.2f} MB body); meanwhile "
              f"{len(health)} /health: p50 {np.percentile(health_ms, 50):.1f} ms   p99 {health_p99:.1f} ms   "
              f"max {health_ms.max():.1f} ms")  # fmt: skip
        checks += [("heaviest batch answered", status == 200),
                   (f"/health p99 <= {TARGET_HEALTH_P99_MS:.0f} ms", health_p99 <= TARGET_HEALTH_P99_MS)]  # fmt: skip
    print("  targets    " + "   ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in checks))


if __name__ == "__main__":
    main()
