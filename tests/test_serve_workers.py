"""`fmnist serve --workers N`: N real server processes on one loopback port, started and stopped by pid."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from conftest import run_cli
from test_predict import tiny_run_dir
from test_serve import photo, pixels, start_server, stop_server

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
if not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists():
    pytest.skip("needs Linux's /proc/PID/task/PID/children to find the workers", allow_module_level=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_run_dir(tmp_path_factory)


def workers_of(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its parent's bookkeeping is left


def wait_gone(pids: list[int], timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.1)
    return [pid for pid in pids if alive(pid)]


def test_two_workers_serve_the_api_and_page_and_end_with_their_parent(tiny):
    proc, url = start_server(tiny[0], "--workers", "2", "--backend", "onnx")
    try:
        workers = workers_of(proc.pid)
        assert len(workers) == 2 and all(alive(pid) for pid in workers)
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
        assert httpx.get(f"{url}/model").json()["name"] == "fastcnn"
        page = httpx.get(f"{url}/")
        assert page.status_code == 200 and 'id="draw"' in page.text
        # Many connections, so both workers take some: every answer is the same, whichever worker gave it.
        labels = set()
        for _ in range(8):
            with httpx.Client(base_url=url) as client:
                labels.add(client.post("/predict", files={"file": ("a.png", photo(), "image/png")}).json()["label"])
                assert client.post("/predict", json={"pixels": pixels()}).status_code == 200
        assert len(labels) == 1
        # Limits hold in each worker as in one process.
        assert (
            httpx.post(f"{url}/predict", content=b"\0" * 6_000_000, headers={"content-type": "image/png"}).status_code
            == 413
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log = stop_server(proc)
    assert wait_gone(workers) == []
    assert "Traceback" not in log and "2 workers" in log


def sockets_on(pid: int, port: int, state: str) -> int:
    """How many TCP sockets on local `port` in `state` (01 established, 0A listening) the process
    `pid` holds, from /proc (its fds and net/tcp)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local_port, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[9]
            count += local_port == port and fields[3] == state and inode in inodes
    return count


def test_connections_opened_at_once_are_spread_over_the_workers(tiny):
    # A load test's burst of keep-alive connections once all landed on whichever worker woke first,
    # leaving the other idle; each worker now listens on its own socket and the kernel spreads them.
    proc, url = start_server(tiny[0], "--workers", "2", "--backend", "onnx")
    port = int(url.rsplit(":", 1)[1])
    clients = []
    try:
        workers = workers_of(proc.pid)
        assert [sockets_on(pid, port, "0A") for pid in workers] == [1, 1]
        assert sockets_on(proc.pid, port, "0A") == 0  # the parent holds the port without listening
        clients = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(32)]
        for client in clients:
            client.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        for client in clients:
            assert client.recv(65536).startswith(b"HTTP/1.1 200")  # answered: no connection waits on the parent
        held = [sockets_on(pid, port, "01") for pid in workers]
        assert sum(held) == 32 and min(held) >= 4, held  # a fair split is 16/16; 4 is far outside chance
    finally:
        for client in clients:
            client.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        stop_server(proc)


def test_sigint_to_the_parent_ends_every_worker(tiny):
    proc, url = start_server(tiny[0], "--workers", "2", "--backend", "onnx")
    workers = workers_of(proc.pid)
    assert len(workers) == 2
    proc.send_signal(signal.SIGINT)  # the parent sets its own handler: this works even where SIGINT was ignored
    proc.wait(timeout=30)
    assert proc.returncode == 130
    assert wait_gone(workers) == []
    assert "Traceback" not in stop_server(proc)


def test_a_worker_that_dies_is_replaced_and_the_parent_killed_outright_takes_the_workers_with_it(tiny):
    proc, url = start_server(tiny[0], "--workers", "2", "--backend", "onnx")
    try:
        first = workers_of(proc.pid)
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and (len(workers_of(proc.pid)) < 2 or first[0] in workers_of(proc.pid)):
            time.sleep(0.2)
        now = workers_of(proc.pid)
        assert len(now) == 2 and first[0] not in now and first[1] in now
        assert httpx.get(f"{url}/health").status_code == 200
        proc.kill()  # no chance to stop them: the workers must notice by themselves
        proc.wait()
        assert wait_gone(now) == []
    finally:
        log = stop_server(proc)
    assert f"server worker {first[0]} ended" in log


def test_a_worker_that_cannot_start_is_one_line(tmp_path, isolated_env):
    (tmp_path / "notarun").mkdir()
    result = run_cli("serve", str(tmp_path / "notarun"), "--port", "0", "--workers", "2", env=isolated_env, timeout=120)
    assert result.returncode != 0 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, (
        result.stderr
    )
    assert "Traceback" not in result.stderr + result.stdout
