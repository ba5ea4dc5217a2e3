"""`fmnist predict --explain` (fmnist.inference.explain) on a smoke-trained run and real photos. Oracles: brute-force
cosine over the same features in numpy, Trust's own OOD score, the trust record's training sample."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from conftest import REAL_DATA_ENV, real_data_or_skip, run_cli
from fmnist.constants import CLASS_NAMES
from fmnist.data.photos import load_image
from fmnist.data.sources import resolve_dataset
from fmnist.data.splits import saved_holdout, stratified_split, stratified_subsample
from fmnist.inference.checkpoint import load_checkpoint, normalization, tta_settings
from fmnist.inference.rundir import NEIGHBOURS_FILE, prepare_run_dir, read_config
from fmnist.inference.trust import TRAIN_SAMPLE, Trust, embed
from fmnist.training.run_writer import RunDirWriter
from fmnist.training.settings import resolve_config
from fmnist.training.trainer import fit

pytestmark = pytest.mark.slow
PNG_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
NEIGHBOUR = re.compile(r"<figcaption>([^<]+)<br>train #(\d+)<br>cosine ([0-9.]+)</figcaption>")
OOD = re.compile(r"OOD score <b>(-?[0-9.]+)</b> against the run's threshold (-?[0-9.]+)")


@pytest.fixture(scope="module")
def data():
    return resolve_dataset(real_data_or_skip())


@pytest.fixture(scope="module")
def run(tmp_path_factory, data):
    options = {"max_steps": 200, "eval_batch_size": 1000, "precision": "fp32"}
    run_dir = prepare_run_dir(tmp_path_factory.mktemp("explain") / "run")
    fit(resolve_config("fastcnn", options=options), data, [RunDirWriter(run_dir, data)])
    return run_dir


@pytest.fixture(scope="module")
def photos(tmp_path_factory, data):
    """Two test images as photos (dark item on a white ground, 200 px JPEG) and one as a 28x28 .npy."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i in (0, 1):
        path = folder / f"photo{i}.jpg"
        Image.fromarray(255 - data.test_images[i]).resize((200, 200)).convert("RGB").save(path)
        paths.append(path)
    np.save(folder / "item.npy", data.test_images[2])
    return [*paths, folder / "item.npy"]


@pytest.fixture(scope="module")
def explained(run, photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("pages") / "explain"
    proc = run_cli("predict", str(run), *map(str, photos), "--json", "--explain", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["predictions"]
    return {Path(r["file"]).name: (r, Path(r["explanation"]).read_text()) for r in rows}


def features(run: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model, meta = load_checkpoint(run)
    mean, std = normalization(meta)
    return embed(model, images, mean=mean, std=std, tta=tta_settings(meta)["tta"], precision="fp32")


def test_a_page_per_image_with_its_pictures(explained, photos):
    from PIL import Image

    assert sorted(explained) == sorted(p.name for p in photos)
    for row, page in explained.values():
        assert Path(row["explanation"]).name == Path(row["file"]).stem + ".html"
        blobs = PNG_URI.findall(page)
        assert len(blobs) >= 7  # the input, its Grad-CAM, 5 neighbours
        for blob in blobs:
            assert Image.open(io.BytesIO(base64.b64decode(blob))).size == (112, 112)
        assert "<script" not in page and "http" not in page  # self-contained


def test_neighbours_are_the_nearest_by_cosine(explained, photos, run, data):
    cache = run / NEIGHBOURS_FILE
    arrays = load_file(str(cache))
    # The sample is trust's: TRAIN_SAMPLE class-balanced images of the training split, validation left out.
    labels = np.asarray(data.train_labels)
    train_idx, _ = stratified_split(labels, *saved_holdout(read_config(run)))
    expected = train_idx[stratified_subsample(labels[train_idx], TRAIN_SAMPLE)]
    np.testing.assert_array_equal(arrays["indices"], expected)
    np.testing.assert_array_equal(arrays["images"], data.train_images[expected])
    check = np.arange(0, TRAIN_SAMPLE, 97)  # the cached features are the network's (a spread of rows)
    np.testing.assert_allclose(arrays["features"][check], features(run, data.train_images[expected[check]])[1],
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    with safe_open(str(cache), "numpy") as f:
        assert len(f.metadata()["weights_sha256"]) == 64

    bank = arrays["features"].astype(np.float64)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    for path in photos:
        image = load_image(path)
        query = features(run, image[None])[1][0].astype(np.float64)
        similarity = bank @ (query / np.linalg.norm(query))
        best = np.argsort(-similarity)[:5]
        shown = NEIGHBOUR.findall(explained[path.name][1])
        assert [int(index) for _, index, _ in shown] == arrays["indices"][best].tolist()
        np.testing.assert_allclose([float(s) for _, _, s in shown], similarity[best], atol=6e-4)
        assert [label for label, _, _ in shown] == [CLASS_NAMES[c] for c in arrays["labels"][best]]


def test_ood_score_is_trusts(explained, photos, run):
    trust = Trust.load(run)
    for path in photos:
        logits, feats = features(run, load_image(path)[None])
        score, threshold = map(float, OOD.search(explained[path.name][1]).groups())
        assert score == pytest.approx(float(trust.ood_scores(logits, feats)[0]), abs=6e-4)
        assert threshold == pytest.approx(trust.record.ood_threshold, abs=6e-4)


def test_a_training_image_is_its_own_nearest(run, data, tmp_path):
    """Cached second call (no dataset in the environment): a sampled training image finds itself at cosine 1."""
    index = int(load_file(str(run / NEIGHBOURS_FILE))["indices"][123])
    np.save(tmp_path / "train.npy", data.train_images[index])
    env = {k: v for k, v in os.environ.items() if k != REAL_DATA_ENV}
    env["XDG_CACHE_HOME"] = str(tmp_path / "empty-cache")
    proc = run_cli("predict", str(run), str(tmp_path / "train.npy"), "--no-preprocess", "--explain",
                   str(tmp_path / "out"), env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    label, shown, cosine = NEIGHBOUR.findall((tmp_path / "out" / "train.html").read_text())[0]
    assert (int(shown), float(cosine), label) == (index, 1.0, CLASS_NAMES[data.train_labels[index]])


def test_a_bad_explain_path_is_one_line(run, photos, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for bad in (blocker, blocker / "below"):
        proc = run_cli("predict", str(run), str(photos[0]), "--explain", str(bad))
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1 and "--explain" in proc.stderr, proc.stderr
