"""POST /explain: a real server on 127.0.0.1 serving test_serve's tiny calibrated run, on both backends.

Oracles: fmnist.inference.explain's own functions run here on the same image (the neighbours computed directly
from the run's training data, not read from the server's cache; Grad-CAM), and Trust's OOD score on the
checkpoint's fp32 features. The servers run without FMNIST_DATA, so the neighbours come from the data the tiny
run records having been trained on.
"""

from __future__ import annotations

import base64
import io
import os
import shutil

import numpy as np
import pytest

from conftest import REAL_DATA_ENV, write_synthetic_idx
from fmnist.data.dataset import load_idx_folder
from fmnist.data.photos import decode_image, to_dataset_form
from fmnist.inference.checkpoint import load_checkpoint, normalization, tta_settings
from fmnist.inference.explain import NEIGHBOURS, compute_neighbours, explain
from fmnist.inference.explain_page import overlay
from fmnist.inference.predict import Predictor
from fmnist.inference.rundir import NEIGHBOURS_FILE, TRUST_FILE
from fmnist.inference.trust import NO_TRUST_NOTE, Trust, embed
from test_serve import BAD_INPUTS, noise, photo, pixels, schema_errors, start_server, stop_server, tiny  # noqa: F401

httpx = pytest.importorskip("httpx")
ANSWER = "/paths/~1explain/post/responses/200/content/application~1json/schema"


def no_real_data() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != REAL_DATA_ENV}


@pytest.fixture(scope="module", params=["onnx", "torch"])
def server(request, tiny):  # noqa: F811
    proc, url = start_server(tiny[0], "--backend", request.param, "--precision", "fp32", "--workers", "1",
                             env=no_real_data())  # fmt: skip
    yield url, request.param
    stop_server(proc)


@pytest.fixture(scope="module")
def oracle(tiny):  # noqa: F811
    """The run's predictor (fp32) and its neighbours computed here from the training data."""
    predictor = Predictor(tiny[0], precision="fp32")
    return predictor, compute_neighbours(predictor, load_idx_folder(tiny[1]))


def pixels_of(uri: str) -> np.ndarray:
    from PIL import Image

    head, data = uri.split(",", 1)
    assert head == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


def test_explain_matches_the_library(server, tiny, oracle):  # noqa: F811
    url, backend = server
    predictor, neighbours = oracle
    trust = Trust.load(tiny[0])
    model, meta = load_checkpoint(tiny[0])
    mean, std = normalization(meta)
    for name, request, image in [
        ("bar.png", {"files": {"file": ("bar.png", photo(), "image/png")}}, to_dataset_form(decode_image(photo()))),
        ("pixels", {"json": {"pixels": noise()}}, np.array(noise(), dtype=np.uint8)),
    ]:  # fmt: skip
        reply = httpx.post(f"{url}/explain", timeout=120, **request)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert schema_errors(httpx.get(f"{url}/openapi.json").json())(ANSWER, body) == []
        assert body["name"] == name and body["absent"] == {} and "note" not in body
        np.testing.assert_array_equal(pixels_of(body["input"]), image)
        expected = explain(predictor, image[None], neighbours)[0]

        shown = body["neighbours"]
        assert len(shown) == NEIGHBOURS
        assert [n["index"] for n in shown] == expected.neighbour_indices
        assert [n["label"] for n in shown] == expected.neighbour_labels
        np.testing.assert_allclose([n["cosine"] for n in shown], expected.neighbour_similarity, atol=6e-4)
        train = load_idx_folder(tiny[1]).train_images
        for n in shown:
            np.testing.assert_array_equal(pixels_of(n["image"]), train[n["index"]])

        logits, features = embed(model, image[None], mean=mean, std=std, tta=tta_settings(meta)["tta"])
        score = float(trust.ood_scores(logits, features)[0])
        assert body["ood"]["score"] == pytest.approx(score, abs=1e-3)
        assert body["ood"]["threshold"] == trust.record.ood_threshold
        assert body["ood"]["unknown"] is (score > trust.record.ood_threshold)
        predicted = httpx.post(f"{url}/predict", timeout=60, **request).json()
        assert body["ood"]["unknown"] is predicted["unknown"]  # the page's panel agrees with its "unknown" line

        assert body["gradcam"]["label"] == expected.top[0]["label"] and body["gradcam"]["flat"] is expected.cam_flat
        heat = pixels_of(body["gradcam"]["image"]).astype(int)
        assert heat.shape == (28, 28, 3)
        assert np.abs(heat - overlay(image, expected.cam)).max() <= 2  # thread counts differ: rounding only
    assert body["ood"]["unknown"] is True  # the noise, last: nothing like the training images
    assert (tiny[0] / NEIGHBOURS_FILE).is_file()  # computed once, then cached in the run


EXPLAIN_BAD = ["empty body", "text as image", "text body", "6 MB body", "blank image", "27x28 pixels", "NaN",
               "invalid JSON", "two files on /predict", "bad top_k"]  # fmt: skip


@pytest.mark.parametrize("name", EXPLAIN_BAD)
def test_bad_input_is_one_line_4xx(server, name):
    url, _ = server
    _, kwargs, _, status = next(row for row in BAD_INPUTS if row[0] == name)
    kwargs = {**kwargs, "params": {"preprocess": "maybe"}} if name == "bad top_k" else kwargs  # /explain's own query
    reply = httpx.post(f"{url}/explain", timeout=30, **kwargs)
    assert reply.status_code == status, (name, reply.text)
    detail = reply.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail
    if name.startswith("two files"):
        assert detail.startswith("/explain takes one image")
    assert httpx.get(f"{url}/health").status_code == 200


def test_missing_parts_are_null_with_their_reason(tiny, tmp_path):  # noqa: F811
    """A copy of the run without its trust record, served with FMNIST_DATA at other data: no OOD score (the
    run says why) and no neighbours (the data is not what the run was trained on); Grad-CAM still there."""
    run = shutil.copytree(tiny[0], tmp_path / "run")
    (run / TRUST_FILE).unlink()
    (run / NEIGHBOURS_FILE).unlink(missing_ok=True)
    other = write_synthetic_idx(tmp_path / "other-data", n_train=700)
    proc, url = start_server(run, "--workers", "1", env={**no_real_data(), REAL_DATA_ENV: str(other)})
    try:
        body = httpx.post(f"{url}/explain", json={"pixels": pixels()}, timeout=60).json()
        assert body["ood"] is None and body["absent"]["ood"] == NO_TRUST_NOTE == body["note"]
        assert body["neighbours"] is None and "not the ones this run was trained on" in body["absent"]["neighbours"]
        assert body["gradcam"]["label"] and set(body["absent"]) == {"ood", "neighbours"}
        assert schema_errors(httpx.get(f"{url}/openapi.json").json())(ANSWER, body) == []
        assert not (run / NEIGHBOURS_FILE).exists()
    finally:
        stop_server(proc)
