"""`fmnist serve`: a real server on a loopback port, hit with real HTTP requests (limits: test_serve_limits.py)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from fmnist.data.dataset import load_idx_folder
from fmnist.data.photos import decode_image, to_dataset_form
from fmnist.inference.predict import Predictor
from fmnist.inference.trust import NO_TRUST_NOTE, Trust, calibrate_run
from fmnist.serve.limits import MAX_BATCH, PIXEL_BUDGET
from test_predict import item_image, png_bytes, tiny_run_dir

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def start_server(run_dir: Path, *args: str, timeout: float = 90.0,
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:  # fmt: skip
    """`fmnist serve RUN --port 0 ARGS` in a subprocess (in `env`, else this process's environment); returns
    (process, base URL) once /health answers.

    Its output goes to a file (`proc.log_path`), read by tests that check what the server logged.
    """
    handle, name = tempfile.mkstemp(prefix="fmnist-serve-", suffix=".log")
    os.close(handle)
    log_path = Path(name)
    env = {**(os.environ if env is None else env), "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "fmnist", "serve", str(run_dir), "--port", "0", *args]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    proc.log_path = log_path
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(r"on (http://127\.0\.0\.1:\d+)", log_path.read_text())
        if match:
            try:
                if httpx.get(f"{match.group(1)}/health", timeout=2).status_code == 200:
                    return proc, match.group(1)
            except httpx.HTTPError:
                pass
        elif proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"server did not start: {stop_server(proc)[-2000:]}")


def stop_server(proc: subprocess.Popen) -> str:
    """End the server by its process id; returns what it logged (and removes the log file)."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log = proc.log_path.read_text()
    proc.log_path.unlink()
    return log


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    run_dir, data_dir = tiny_run_dir(tmp_path_factory)
    calibrate_run(run_dir, load_idx_folder(data_dir))  # the trust record training writes when it has the data
    return run_dir, data_dir


@pytest.fixture(scope="module", params=["onnx", "torch"])
def server(request, tiny):
    # fp32 so answers can be compared with the library's exactly (auto would pick bf16 on AMX CPUs)
    proc, url = start_server(tiny[0], "--backend", request.param, "--precision", "fp32")
    yield url, request.param
    stop_server(proc)


def photo() -> bytes:
    return png_bytes(255 - item_image(90, 60, box=(10, 80, 20, 40)), "RGB")  # a dark bar on white


def pixels() -> list[list[int]]:
    image = np.zeros((28, 28), dtype=np.uint8)
    image[8:11, 4:24] = 250  # one of the synthetic classes: a bar at rows 8-10
    return image.tolist()


def multipart(name: str, data: bytes, boundary: str = "bnd") -> tuple[bytes, str]:
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'.encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# -- the API --------------------------------------------------------------------------------------------


def test_health_model_docs_and_page(server, tiny):
    url, backend = server
    assert httpx.get(f"{url}/health").json() == {"status": "ok", "model": "fastcnn", "backend": backend}
    info = httpx.get(f"{url}/model").json()
    assert info["name"] == "fastcnn" and info["params"] > 0 and info["gradcam"] is True
    assert 0 <= info["test_accuracy"] <= 1 and info["data"]["sha256"]["test_images"]
    assert len(info["class_names"]) == 10 and info["max_batch"] == MAX_BATCH and info["max_pixels"] == PIXEL_BUDGET
    docs = httpx.get(f"{url}/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    if importlib.util.find_spec("fastapi_offline"):  # then the docs' assets come from here too: works offline
        assert "cdn." not in docs.text
        assert httpx.get(f"{url}/docs-assets/swagger-ui-bundle.js").status_code == 200
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and 'id="draw"' in page.text and "cdn" not in page.text.lower()
    for asset in ("/static/app.js", "/static/style.css", "/favicon.ico", "/example.png"):
        reply = httpx.get(f"{url}{asset}")
        assert reply.status_code == 200 and reply.content, asset
    assert httpx.get(f"{url}/favicon.ico").headers["content-type"] == "image/png"
    for path in ("/", "/static/app.js", "/static/style.css"):  # works offline: nothing fetched from elsewhere
        text = httpx.get(f"{url}{path}").text
        assert re.search(r"(src|href)=[\"']?(https?:)?//|url\((https?:)?//|fetch\([\"'`]https?:", text) is None


def test_predict_upload_raw_and_json_agree_with_the_library(server, tiny):
    url, backend = server
    predictor = Predictor(tiny[0], backend=backend, precision="fp32")
    data = photo()
    expected = predictor.assess(to_dataset_form(decode_image(data))[None]).probabilities[0]  # calibrated
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
    assert (
        httpx.post(f"{url}/predict", content=data, headers={"content-type": "image/png"}).json()["label"]
        == body["label"]
    )
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
    predictor = Predictor(tiny[0], backend=backend, precision="fp32")
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


def noise() -> list[list[int]]:
    return np.random.default_rng(0).integers(0, 256, (28, 28)).tolist()  # nothing like a clothing item


def test_answers_are_calibrated_flag_unknown_images_and_add_sets(server, tiny):
    """Oracles: softmax(logits / T) with the run's own T on the library's logits; the trust record's own
    unknown flags and prediction sets on the library's logits and features (fmnist.inference.trust)."""
    url, backend = server
    predictor = Predictor(tiny[0], backend=backend, precision="fp32")
    trust = Trust.load(tiny[0])
    assert trust.temperature != 1 and trust.has_ood and trust.has_sets  # the tiny run has a real record
    test_images = load_idx_folder(tiny[1]).test_images[:4]
    images = np.concatenate([test_images, np.array([noise()], dtype=np.uint8)])
    logits, features = predictor.embed(images)
    z = logits.astype(np.float64) / trust.temperature
    calibrated = np.exp(z - z.max(1, keepdims=True))
    calibrated /= calibrated.sum(1, keepdims=True)
    expected = trust.assess(logits, features, 0.9)
    assert not expected.unknown[:4].all() and expected.unknown[4]  # dataset images are items, noise is not
    query = "coverage=0.9&top_k=2&preprocess=false"
    reply = httpx.post(f"{url}/predict/batch?{query}", json={"pixels": images.tolist()})
    assert reply.status_code == 200, reply.text
    for i, body in enumerate(reply.json()["predictions"]):
        served = np.array([body["probabilities"][c] for c in predictor.class_names])
        assert np.abs(served - calibrated[i]).max() < 1e-4
        assert body["label"] == predictor.class_names[int(calibrated[i].argmax())] and len(body["top"]) == 2
        assert body["unknown"] is bool(expected.unknown[i]) and "note" not in body
        assert body["ood_score"] == pytest.approx(float(expected.ood_scores[i]), abs=1e-3)
        assert body["set"] == [predictor.class_names[c] for c in np.flatnonzero(expected.sets[i])]
    one = httpx.post(f"{url}/predict", json={"pixels": noise()}).json()  # the single route, no coverage
    assert one["unknown"] is True and one["set"] is None and one["top"] and one["label"]  # warn: classes kept
    calibration = httpx.get(f"{url}/model").json()["calibration"]
    assert calibration["temperature"] == trust.temperature and calibration["ood"] == "warn"
    assert calibration["ood_threshold"] == trust.record.ood_threshold < one["ood_score"]
    assert httpx.post(f"{url}/predict?coverage=1.5", json={"pixels": noise()}).status_code == 422


def test_ood_reject_withholds_classes_and_off_flags_nothing(tiny):
    for mode in ("reject", "off"):
        proc, url = start_server(tiny[0], "--ood", mode, "--workers", "1")
        try:
            known_image = load_idx_folder(tiny[1]).test_images[0]
            batch = {"pixels": [known_image.tolist(), noise()]}
            body = httpx.post(f"{url}/predict/batch?coverage=0.9&preprocess=false", json=batch).json()
            known, unknown = body["predictions"]
            assert known["label"] and known["top"] and known["set"] is not None
            if mode == "reject":
                assert known["unknown"] is False and unknown["unknown"] is True
                assert unknown["label"] is None and unknown["top"] == [] and unknown["probabilities"] == {}
                assert unknown["set"] == []
            else:
                assert known["unknown"] is None and unknown["unknown"] is None and unknown["label"]
            assert httpx.get(f"{url}/model").json()["calibration"]["ood"] == mode
            pointer = "/paths/~1predict~1batch/post/responses/200/content/application~1json/schema"
            assert schema_errors(httpx.get(f"{url}/openapi.json").json())(pointer, body) == []  # withheld fits too
        finally:
            stop_server(proc)


def upload(data: bytes, name: str = "a.png") -> dict:
    return {"files": {"file": (name, data, "image/png")}}


def raw(data: bytes | str, kind: str) -> dict:
    return {"content": data, "headers": {"content-type": kind}}


def js(value) -> dict:
    return {"json": {"pixels": value}}


def uploads(count: int) -> dict:
    return {"files": [("files", (f"{i}.png", photo(), "image/png")) for i in range(count)]}


NAN = json.dumps({"pixels": [[float("nan")] * 28] * 28})
NESTED = b'{"pixels": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
NO_FILE = b'--xx\r\nContent-Disposition: form-data; name="field"\r\n\r\nvalue\r\n--xx--\r\n'
BAD_INPUTS = [  # (name, request kwargs, path, expected status)
    ("empty body", {"content": b""}, "/predict", 422),
    ("empty upload", upload(b""), "/predict", 415),
    ("truncated PNG", upload(photo()[: len(photo()) // 2]), "/predict", 415),
    ("text as image", upload(b"just some text"), "/predict", 415),
    ("text body", raw(b"hello", "text/plain"), "/predict", 415),
    ("6 MB body", upload(os.urandom(6_000_000)), "/predict", 413),
    ("6 MB raw body", raw(b"\0" * 6_000_000, "image/png"), "/predict", 413),
    ("blank image", upload(png_bytes(np.full((40, 40), 255, np.uint8))), "/predict", 422),
    ("27x28 pixels", js([[0] * 28] * 27), "/predict", 422),
    ("28x27 pixels", js([[0] * 27] * 28), "/predict", 422),
    ("ragged rows", js([[0] * 28] * 27 + [[0] * 5]), "/predict", 422),
    ("NaN", raw(NAN, "application/json"), "/predict", 422),
    ("strings", js([["0"] * 28] * 28), "/predict", 422),
    ("booleans", js([[True] * 28] * 28), "/predict", 422),
    ("out of range", js([[300] * 28] * 28), "/predict", 422),
    ("negative", js([[-1] * 28] * 28), "/predict", 422),
    ("deeply nested JSON", raw(NESTED, "application/json"), "/predict", 422),
    ("no pixels key", {"json": {"image": []}}, "/predict", 422),
    ("not an object", {"json": [1, 2, 3]}, "/predict", 422),
    ("invalid JSON", raw(b"{pixels: ", "application/json"), "/predict", 422),
    ("multipart without file", raw(NO_FILE, "multipart/form-data; boundary=xx"), "/predict", 422),
    ("malformed multipart", raw(b"garbage", "multipart/form-data"), "/predict", 422),
    ("truncated multipart", raw(multipart("a.png", photo())[0][:-12], multipart("", b"")[1]), "/predict", 422),
    ("two files on /predict", uploads(2), "/predict", 422),
    ("bad top_k", {**js(pixels()), "params": {"top_k": 0}}, "/predict", 422),
    ("empty batch", js([]), "/predict/batch", 422),
    ("batch too large", js([pixels()] * (MAX_BATCH + 1)), "/predict/batch", 413),
    ("too many files", uploads(MAX_BATCH + 1), "/predict/batch", 413),
]


@pytest.mark.parametrize("name, kwargs, path, status", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_its_4xx_and_the_server_keeps_serving(server, name, kwargs, path, status):
    url, _ = server
    reply = httpx.post(f"{url}{path}", timeout=30, **kwargs)
    assert reply.status_code == status, (name, reply.status_code, reply.text)
    assert reply.headers["content-type"].startswith("application/json")
    assert isinstance(reply.json()["detail"], str) and reply.json()["detail"]
    assert httpx.get(f"{url}/health").status_code == 200


def test_chunked_oversized_body_is_413(server):
    url, _ = server

    def chunks():
        for _ in range(7):
            yield b"\0" * 1_000_000  # no Content-Length: the server must count as it reads

    reply = httpx.post(f"{url}/predict", content=chunks(), headers={"content-type": "image/png"}, timeout=30)
    assert reply.status_code == 413
    assert httpx.get(f"{url}/health").status_code == 200


def test_wrong_method_is_405_with_allow(server):
    url, _ = server
    wrong = [("POST", "/health", "GET"), ("GET", "/predict", "POST"), ("PUT", "/predict/batch", "POST"),
             ("POST", "/", "GET"), ("DELETE", "/static/app.js", "GET")]  # fmt: skip
    for method, path, allowed in wrong:
        reply = httpx.request(method, f"{url}{path}")
        assert reply.status_code == 405 and allowed in reply.headers["allow"], (method, path, reply.headers)
        assert reply.json()["detail"]


# -- the OpenAPI document describes the real answers -------------------------------------------------------


def schema_errors(document: dict):
    """errors(pointer, instance): what is wrong with `instance` by the schema at `pointer` in the OpenAPI document."""
    jsonschema = pytest.importorskip("jsonschema")
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    registry = Registry().with_resource("urn:api", Resource.from_contents(document, DRAFT202012))

    def errors(pointer: str, instance) -> list[str]:
        validator = jsonschema.Draft202012Validator({"$ref": f"urn:api#{pointer}"}, registry=registry)
        return [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(instance)]

    return errors


def test_every_answer_fits_the_openapi_schema(server):
    url, _ = server
    document = httpx.get(f"{url}/openapi.json").json()
    errors = schema_errors(document)
    escape = lambda text: text.replace("/", "~1")

    def check(method: str, path: str, **kwargs) -> None:
        reply = httpx.request(method, f"{url}{path}", timeout=30, **kwargs)
        code = str(reply.status_code)
        assert code in document["paths"][path][method.lower()]["responses"], (method, path, code, "not in the schema")
        assert reply.headers["content-type"] == "application/json"
        pointer = f"/paths/{escape(path)}/{method.lower()}/responses/{code}/content/application~1json/schema"
        assert errors(pointer, reply.json()) == [], (method, path, code)

    check("GET", "/health")
    check("GET", "/model")
    full = {"params": {"gradcam": True, "include_input": True, "top_k": 10, "coverage": 0.9}}
    answers = [("/predict", {**upload(photo()), **full}), ("/predict", raw(photo(), "image/png")),
               ("/predict", {**js(pixels()), **full}), ("/predict/batch", {**uploads(2), **full}),
               ("/predict/batch", js([pixels()] * 3))]  # fmt: skip
    for path, kwargs in answers + [(path, kwargs) for _, kwargs, path, _ in BAD_INPUTS]:  # errors too
        check("POST", path, **kwargs)
    for reply in (httpx.get(f"{url}/nowhere"), httpx.post(f"{url}/health")):  # 404 and 405 belong to no operation
        assert errors("/components/schemas/Error", reply.json()) == []

    # The request schemas are exact as well: what they admit is accepted, what they refuse is refused.
    def request(path: str, media: str) -> str:
        return f"/paths/{escape(path)}/post/requestBody/content/{escape(media)}/schema"

    one, many = request("/predict", "application/json"), request("/predict/batch", "application/json")
    assert errors(one, {"pixels": pixels()}) == [] and errors(many, {"pixels": [pixels()] * MAX_BATCH}) == []
    refused = [(one, "/predict", [[0] * 28] * 27), (one, "/predict", [[256] * 28] * 28),
               (many, "/predict/batch", []), (many, "/predict/batch", [pixels()] * (MAX_BATCH + 1))]  # fmt: skip
    for pointer, path, value in refused:
        assert errors(pointer, {"pixels": value}) and httpx.post(f"{url}{path}", **js(value)).status_code in (413, 422)
    single, batch = (document["paths"][p]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
                     for p in ("/predict", "/predict/batch"))  # fmt: skip
    assert single["required"] == ["file"] and batch["required"] == ["files"]
    assert (batch["properties"]["files"]["minItems"], batch["properties"]["files"]["maxItems"]) == (1, MAX_BATCH)
    assert errors(request("/predict/batch", "multipart/form-data"), {"files": ["x"] * (MAX_BATCH + 1)})
    described = json.dumps(document)  # what no schema can check is said in words
    assert "not an image" in described and "no item" in described and f"{PIXEL_BUDGET:,}" in described


# -- the command line ----------------------------------------------------------------------------------------


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
        # a run without a trust record answers at T = 1, with no unknown answer or sets, and says why
        assert body["note"] == NO_TRUST_NOTE and body["unknown"] is None
        assert httpx.post(f"{url}/predict?coverage=0.9", json={"pixels": pixels()}).json()["set"] is None
    finally:
        stop_server(proc)
