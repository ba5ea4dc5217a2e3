"""`fmnist serve`: a real server on a loopback port, hit with real HTTP requests."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from fmnist.predict import Predictor
from fmnist.serve.preprocess import decode_image, to_dataset_form
from test_predict import item_image, png_bytes, tiny_run_dir

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def start_server(run_dir: Path, *args: str, timeout: float = 90.0) -> tuple[subprocess.Popen, str]:
    """`fmnist serve RUN --port 0 ARGS` in a subprocess; returns (process, base URL) once /health answers."""
    env = {**os.environ, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "fmnist", "serve", str(run_dir), "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    line = proc.stdout.readline()
    match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
    if match is None:
        proc.kill()
        raise AssertionError(f"server did not start: {line}{proc.stdout.read()}")
    url = match.group(1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("server never answered /health")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_run_dir(tmp_path_factory)


@pytest.fixture(scope="module", params=["onnx", "torch"])
def server(request, tiny):
    run_dir, _ = tiny
    # fp32 so answers can be compared with the library's exactly (auto would pick bf16 on AMX CPUs)
    proc, url = start_server(run_dir, "--backend", request.param, "--precision", "fp32")
    yield url, request.param
    stop_server(proc)


def photo() -> bytes:
    return png_bytes(255 - item_image(90, 60, box=(10, 80, 20, 40)), "RGB")  # a dark bar on white


def pixels() -> list[list[int]]:
    image = np.zeros((28, 28), dtype=np.uint8)
    image[8:11, 4:24] = 250  # one of the synthetic classes: a bar at rows 8-10
    return image.tolist()


def test_health_model_docs_and_page(server, tiny):
    url, backend = server
    assert httpx.get(f"{url}/health").json() == {"status": "ok", "model": "fastcnn", "backend": backend}
    info = httpx.get(f"{url}/model").json()
    assert info["name"] == "fastcnn" and info["params"] > 0 and info["gradcam"] is True
    assert 0 <= info["test_accuracy"] <= 1 and info["data"]["sha256"]["test_images"]
    assert info["tta_flip"] is True and len(info["class_names"]) == 10
    schema = httpx.get(f"{url}/openapi.json").json()
    assert {"/predict", "/predict/batch", "/health", "/model"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    docs = httpx.get(f"{url}/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    if importlib.util.find_spec("fastapi_offline"):  # then the docs' assets come from here too: works offline
        assert "cdn." not in docs.text
        assert httpx.get(f"{url}/docs-assets/swagger-ui-bundle.js").status_code == 200
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and 'id="draw"' in page.text and "cdn" not in page.text.lower()
    for asset in ("app.js", "style.css"):
        assert httpx.get(f"{url}/static/{asset}").status_code == 200
    for path in ("/", "/static/app.js", "/static/style.css"):  # works offline: nothing fetched from elsewhere
        assert (
            re.search(
                r"(src|href)=[\"']?(https?:)?//|url\((https?:)?//|fetch\([\"'`]https?:", httpx.get(f"{url}{path}").text
            )
            is None
        )


def test_predict_upload_raw_and_json_agree_with_the_library(server, tiny):
    url, backend = server
    run_dir, _ = tiny
    predictor = Predictor(run_dir, backend=backend, precision="fp32")
    data = photo()
    expected = predictor.probabilities(to_dataset_form(decode_image(data))[None])[0]

    upload = httpx.post(
        f"{url}/predict?top_k=4&include_input=true&gradcam=true", files={"file": ("bar.png", data, "image/png")}
    )
    assert upload.status_code == 200, upload.text
    body = upload.json()
    assert body["name"] == "bar.png" and len(body["top"]) == 4
    assert body["label"] == predictor.class_names[int(expected.argmax())]
    assert abs(body["probability"] - float(expected.max())) < 1e-3
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-3
    assert np.array(body["input"]).shape == (28, 28) and np.array(body["gradcam"]).shape == (28, 28)
    assert 0 <= np.min(body["gradcam"]) and np.max(body["gradcam"]) <= 1

    raw = httpx.post(f"{url}/predict", content=data, headers={"content-type": "image/png"}).json()
    assert raw["label"] == body["label"]

    js = httpx.post(f"{url}/predict", json={"pixels": pixels()})
    assert js.status_code == 200 and js.json()["name"] == "pixels"
    direct = predictor.probabilities(np.array(pixels(), dtype=np.uint8)[None])[0]
    assert js.json()["label"] == predictor.class_names[int(direct.argmax())]
    floats = httpx.post(f"{url}/predict", json={"pixels": (np.array(pixels()) / 255).tolist()}).json()
    assert floats["label"] == js.json()["label"]  # floats in [0,1] are scaled


def test_batch_multipart_and_json(server):
    url, _ = server
    files = [("files", (f"item{i}.png", photo(), "image/png")) for i in range(3)]
    reply = httpx.post(f"{url}/predict/batch?top_k=1", files=files)
    assert reply.status_code == 200, reply.text
    predictions = reply.json()["predictions"]
    assert [p["name"] for p in predictions] == ["item0.png", "item1.png", "item2.png"]
    assert len({p["label"] for p in predictions}) == 1 and all(len(p["top"]) == 1 for p in predictions)
    reply = httpx.post(f"{url}/predict/batch", json={"pixels": [pixels(), pixels()]})
    assert reply.status_code == 200 and len(reply.json()["predictions"]) == 2


def test_concurrent_requests_each_get_their_own_answer(server, tiny):
    """Requests are batched inside the server; every answer must still belong to its own image."""
    url, backend = server
    run_dir, _ = tiny
    predictor = Predictor(run_dir, backend=backend, precision="fp32")
    images = []
    for c in range(10):
        image = np.zeros((28, 28), dtype=np.uint8)
        image[2 + 2 * c : 5 + 2 * c, 4:24] = 250
        images.append(image)
    expected = [predictor.class_names[i] for i in predictor.probabilities(np.stack(images)).argmax(1)]

    async def fire():
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            replies = await asyncio.gather(
                *(client.post("/predict", json={"pixels": images[i % 10].tolist()}) for i in range(60))
            )
        return [r.json()["label"] for r in replies]

    assert asyncio.run(fire()) == [expected[i % 10] for i in range(60)]


BAD_INPUTS = [
    # (name, request kwargs, path, expected status)
    ("empty body", {"content": b""}, "/predict", 422),
    ("empty upload", {"files": {"file": ("a.png", b"", "image/png")}}, "/predict", 415),
    ("truncated PNG", {"files": {"file": ("a.png", photo()[: len(photo()) // 2], "image/png")}}, "/predict", 415),
    ("text as image", {"files": {"file": ("a.png", b"just some text", "image/png")}}, "/predict", 415),
    ("text body", {"content": b"hello", "headers": {"content-type": "text/plain"}}, "/predict", 415),
    ("6 MB body", {"files": {"file": ("big.png", os.urandom(6_000_000), "image/png")}}, "/predict", 413),
    ("6 MB raw body", {"content": b"\0" * 6_000_000, "headers": {"content-type": "image/png"}}, "/predict", 413),
    ("27x28 pixels", {"json": {"pixels": [[0] * 28] * 27}}, "/predict", 422),
    ("28x27 pixels", {"json": {"pixels": [[0] * 27] * 28}}, "/predict", 422),
    ("ragged rows", {"json": {"pixels": [[0] * 28] * 27 + [[0] * 5]}}, "/predict", 422),
    (
        "NaN",
        {
            "content": json.dumps({"pixels": [[float("nan")] * 28] * 28}),
            "headers": {"content-type": "application/json"},
        },
        "/predict",
        422,
    ),
    ("strings", {"json": {"pixels": [["0"] * 28] * 28}}, "/predict", 422),
    ("booleans", {"json": {"pixels": [[True] * 28] * 28}}, "/predict", 422),
    ("out of range", {"json": {"pixels": [[300] * 28] * 28}}, "/predict", 422),
    ("negative", {"json": {"pixels": [[-1] * 28] * 28}}, "/predict", 422),
    (
        "deeply nested JSON",
        {
            "content": b'{"pixels": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "headers": {"content-type": "application/json"},
        },
        "/predict",
        422,
    ),
    ("no pixels key", {"json": {"image": []}}, "/predict", 422),
    ("not an object", {"json": [1, 2, 3]}, "/predict", 422),
    ("invalid JSON", {"content": b"{pixels: ", "headers": {"content-type": "application/json"}}, "/predict", 422),
    (
        "multipart without file",
        {
            "content": b'--xx\r\nContent-Disposition: form-data; name="field"\r\n\r\nvalue\r\n--xx--\r\n',
            "headers": {"content-type": "multipart/form-data; boundary=xx"},
        },
        "/predict",
        422,
    ),
    (
        "malformed multipart",
        {"content": b"garbage", "headers": {"content-type": "multipart/form-data"}},
        "/predict",
        422,
    ),
    (
        "two files on /predict",
        {"files": [("a", ("a.png", photo(), "image/png")), ("b", ("b.png", photo(), "image/png"))]},
        "/predict",
        422,
    ),
    ("bad top_k", {"json": {"pixels": [[0] * 28] * 28}, "params": {"top_k": 0}}, "/predict", 422),
    ("empty batch", {"json": {"pixels": []}}, "/predict/batch", 422),
    ("batch too large", {"json": {"pixels": [[[0] * 28] * 28] * 257}}, "/predict/batch", 413),
    (
        "blank image",
        {"files": {"file": ("w.png", png_bytes(np.full((40, 40), 255, np.uint8)), "image/png")}},
        "/predict",
        422,
    ),
]


@pytest.mark.parametrize("name, kwargs, path, status", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_its_4xx_and_the_server_keeps_serving(server, name, kwargs, path, status):
    url, _ = server
    reply = httpx.post(f"{url}{path}", timeout=30, **kwargs)
    assert reply.status_code == status, (name, reply.status_code, reply.text)
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.json()["detail"]
    assert httpx.get(f"{url}/health").status_code == 200


def test_chunked_oversized_body_is_413(server):
    url, _ = server

    def chunks():
        for _ in range(7):
            yield b"\0" * 1_000_000  # no Content-Length: the server must count as it reads

    reply = httpx.post(f"{url}/predict", content=chunks(), headers={"content-type": "image/png"}, timeout=30)
    assert reply.status_code == 413
    assert httpx.get(f"{url}/health").status_code == 200


def test_remote_host_needs_a_flag_and_busy_port_is_one_line(tiny, isolated_env):
    run_dir, _ = tiny
    proc = run_cli("serve", str(run_dir), "--host", "0.0.0.0", env=isolated_env, timeout=60)
    assert proc.returncode == 2 and "--allow-remote" in proc.stderr and proc.stderr.count("\n") == 1
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = run_cli("serve", str(run_dir), "--port", str(port), env=isolated_env, timeout=60)
    assert proc.returncode == 1 and "already in use" in proc.stderr and proc.stderr.count("\n") == 1


def test_mlp_has_no_gradcam(tmp_path_factory):
    run_dir, _ = tiny_run_dir(tmp_path_factory, "mlp", model_args={"hidden": [32]}, epochs=1)
    proc, url = start_server(run_dir)
    try:
        assert httpx.get(f"{url}/model").json()["gradcam"] is False
        body = httpx.post(f"{url}/predict?gradcam=true", json={"pixels": pixels()}).json()
        assert body["gradcam"] is None and body["label"]
    finally:
        stop_server(proc)
