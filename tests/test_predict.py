"""Image decoding, photo-to-dataset preprocessing, the Predictor, and `fmnist predict`."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_cli, write_synthetic_idx
from fmnist.data import photos as pp
from fmnist.data.dataset import load_idx_folder
from fmnist.data.photos import BlankImageError, ImageError, decode_image, load_image, to_dataset_form
from fmnist.inference.checkpoint import load_checkpoint, tta_settings
from fmnist.inference.evaluate import predict
from fmnist.inference.predict import Predictor, softmax
from fmnist.inference.rundir import prepare_run_dir
from fmnist.models import create_model
from fmnist.training.run_writer import RunDirWriter
from fmnist.training.settings import resolve_config
from fmnist.training.trainer import fit

Image = pytest.importorskip("PIL.Image")


# -- shared run fixtures (also imported by test_export / test_serve / test_browser) ------------------


def train_run(folder: Path, dataset, model: str = "fastcnn", **values) -> Path:
    """Train `model` briefly and write a real run directory (checkpoint + results)."""
    base = {"epochs": 2, "batch_size": 64, "val_size": 100, "eval_batch_size": 256, "precision": "fp32"}
    run_dir = prepare_run_dir(folder)
    fit(resolve_config(model, options={**base, **values}), dataset, [RunDirWriter(run_dir)])
    return run_dir


def tiny_run_dir(tmp_path_factory, model: str = "fastcnn", **values) -> tuple[Path, Path]:
    """(run_dir, data_dir): `model` trained on the synthetic bar dataset in a couple of seconds."""
    data_dir = write_synthetic_idx(tmp_path_factory.mktemp("tiny-data"))
    return train_run(tmp_path_factory.mktemp("run") / model, load_idx_folder(data_dir), model, **values), data_dir


def cached_real_run(request: pytest.FixtureRequest, data_dir: Path) -> Path:
    """fastcnn trained briefly on the real data, kept in pytest's cache across modules and sessions.

    A cached run is reused only if it still loads with today's model code; otherwise it is
    retrained. Without the cache plugin (-p no:cacheprovider) it lives in a session tmp dir.
    """
    from fmnist.data.sources import resolve_dataset
    from fmnist.errors import FmnistError

    dataset = resolve_dataset(data_dir)
    key = dataset.provenance.files["test_images"].sha256[:16]
    # Today's default net and optimizer are part of the key: a run cached under older defaults
    # would still load (legacy_args), but the tests are about what the default recipe trains.
    default = resolve_config("fastcnn")
    recipe = {"model_args": create_model("fastcnn", **default.model_args).model_args, "optimizer": default.optimizer}
    arch = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=list).encode()).hexdigest()[:8]
    name = f"fmnist-real-fastcnn-s240-{key}-{arch}"
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir(name) if cache else request.getfixturevalue("tmp_path_factory").getbasetemp() / name
    run_dir = folder / "run"
    try:
        load_checkpoint(run_dir)
        if (run_dir / "results.json").is_file():
            return run_dir
    except FmnistError:
        pass
    # ~half an epoch: about 90% test accuracy in ~15 s on 2 cores; trained far enough that int8
    # quantisation is judged on a settled model, not on one whose logits are still near ties.
    base = {"epochs": 1, "max_steps": 240, "val_size": 0, "eval_batch_size": 1000, "precision": "fp32"}
    fit(resolve_config("fastcnn", options=base), dataset, [RunDirWriter(prepare_run_dir(run_dir, overwrite=True))])
    return run_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_run_dir(tmp_path_factory)


def png_bytes(array: np.ndarray, mode: str | None = None, fmt: str = "PNG", **save) -> bytes:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, fmt, **save)
    return buf.getvalue()


def as_photo(image: np.ndarray, rng: np.random.Generator) -> bytes:
    """A dataset image made photo-like: inverted (dark item on white), padded unevenly, upscaled, RGB."""
    inverted = 255 - image
    top, bottom, left, right = rng.integers(2, 20, 4)
    padded = np.pad(inverted, ((top, bottom), (left, right)), constant_values=255)
    scale = int(rng.integers(3, 9))
    big = Image.fromarray(padded).resize((padded.shape[1] * scale, padded.shape[0] * scale), Image.BICUBIC)
    buf = io.BytesIO()
    big.convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def item_image(h: int = 28, w: int = 28, box=(4, 24, 9, 19), value: int = 220) -> np.ndarray:
    image = np.zeros((h, w), dtype=np.uint8)
    y0, y1, x0, x1 = box
    image[y0:y1, x0:x1] = value
    return image


# -- decoding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, fmt", [("L", "PNG"), ("RGB", "PNG"), ("RGB", "JPEG"), ("RGB", "WEBP"), ("P", "PNG"),
                                       ("I;16", "PNG"), ("1", "PNG"), ("CMYK", "JPEG")])  # fmt: skip
def test_decodes_formats_and_modes(mode, fmt):
    image = item_image(40, 30, box=(5, 35, 8, 22))
    data = png_bytes(image, mode, fmt) if mode != "I;16" else png_bytes(image.astype(np.uint16) * 257)
    gray = decode_image(data)
    assert gray.shape == (40, 30) and gray.dtype == np.float32
    assert 0 <= gray.min() and gray.max() <= 255
    assert gray[20, 15] > gray[2, 2] + 100 or mode == "CMYK"  # CMYK's inversion is Pillow's business
    out = to_dataset_form(gray)
    assert out.shape == (28, 28) and out.dtype == np.uint8


def test_npy_arrays(tmp_path: Path):
    image = item_image()
    np.save(tmp_path / "u8.npy", image)
    np.save(tmp_path / "f01.npy", image.astype(np.float32) / 255)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "3d.npy", np.zeros((2, 28, 28)))
    np.testing.assert_array_equal(load_image(tmp_path / "u8.npy", preprocess=False), image)
    np.testing.assert_array_equal(load_image(tmp_path / "f01.npy", preprocess=False), image)
    with pytest.raises(ImageError, match="unreadable .npy"):  # pickled objects are never loaded
        load_image(tmp_path / "obj.npy")
    with pytest.raises(ImageError, match="2-D"):
        load_image(tmp_path / "3d.npy")


@pytest.mark.parametrize("data, fragment", [
    (b"", "empty"), (b"hello, I am text", "not an image"), (png_bytes(item_image())[:60], "unreadable"),
    (b"\x93NUMPY garbage", "unreadable .npy"),
])  # fmt: skip
def test_bad_bytes_are_image_errors(data, fragment):
    with pytest.raises(ImageError, match=fragment):
        decode_image(data)


def test_decompression_bomb_refused(monkeypatch):
    monkeypatch.setattr(pp, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="larger than"):
        decode_image(png_bytes(np.zeros((100, 100), dtype=np.uint8)))


def test_transparent_cutout_gets_contrasting_backdrop():
    rgba = np.zeros((60, 60, 4), dtype=np.uint8)
    rgba[10:50, 20:40] = (250, 250, 250, 255)  # a white shirt on a fully transparent background
    out = to_dataset_form(decode_image(png_bytes(rgba)))
    assert out[14, 14] > 200 and out[14, 0] < 10  # light item, dark surround: not a blank white square


# -- preprocessing ----------------------------------------------------------------------------------


def test_dataset_form_image_is_left_alone():
    image = item_image(box=(0, 28, 6, 22), value=255)  # spans the frame, centred, full contrast
    np.testing.assert_array_equal(to_dataset_form(image.astype(np.float32)), image)


def test_photo_conventions_are_undone():
    photo = np.full((300, 200), 235, dtype=np.uint8)  # light grey backdrop
    photo[40:200, 30:110] = 40  # dark item, off-centre, 160x80
    out = to_dataset_form(decode_image(png_bytes(photo, "RGB", "JPEG", quality=90)))
    rows, cols = np.flatnonzero(out.max(1) > 60), np.flatnonzero(out.max(0) > 60)
    assert out[14, 14] > 200 and out[0, 0] < 20  # inverted: light item on black
    assert rows[0] <= 1 and rows[-1] >= 26  # the longer side spans the frame
    assert 12 <= len(cols) <= 16  # aspect ratio 2:1 kept
    assert abs((cols[0] + cols[-1]) / 2 - 13.5) <= 1  # centred


def test_blank_images_are_refused():
    for value in (0, 128, 255):
        with pytest.raises(BlankImageError):
            to_dataset_form(np.full((50, 60), value, dtype=np.float32))


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 300),
    w=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["noise", "item", "flat"]),
)
def test_any_array_gives_a_28x28_image_or_a_clear_error(h, w, seed, kind):
    rng = np.random.default_rng(seed)
    if kind == "noise":
        array = rng.uniform(0, 255, (h, w))
    elif kind == "flat":
        array = np.full((h, w), rng.uniform(0, 255))
    else:
        array = np.full((h, w), 230.0)
        array[h // 4 : max(h // 4 + 1, 3 * h // 4), w // 3 : max(w // 3 + 1, 2 * w // 3)] = 20
    try:
        out = to_dataset_form(array.astype(np.float32))
    except BlankImageError:
        return
    assert out.shape == (28, 28) and out.dtype == np.uint8


def test_no_preprocess_needs_28x28(tmp_path: Path):
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(item_image(40, 40)))
    with pytest.raises(ImageError, match="must be 28x28"):
        load_image(path, preprocess=False)


# -- Predictor --------------------------------------------------------------------------------------


def test_backends_agree_and_match_evaluate(tiny):
    run_dir, _ = tiny
    torch_pred = Predictor(run_dir, backend="torch", precision="fp32")
    onnx_pred = Predictor(run_dir, backend="onnx")
    images = np.stack([item_image(box=(2 + 2 * c, 5 + 2 * c, 4, 24), value=250) for c in range(10)])
    a, b = torch_pred.logits(images), onnx_pred.logits(images)
    assert np.abs(a - b).max() < 1e-4
    model, meta = load_checkpoint(run_dir)
    x = torch.from_numpy(torch_pred.normalise(images))
    expected = predict(model, x, precision="fp32", **tta_settings(meta)).numpy()
    np.testing.assert_allclose(a, expected, atol=1e-6)
    probs = softmax(a)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert onnx_pred.logits(np.zeros((0, 28, 28), np.uint8)).shape == (0, 10)


# -- the command ------------------------------------------------------------------------------------


def test_cli_predict_batch_dir_and_bad_files(tiny, tmp_path: Path, isolated_env):
    run_dir, _ = tiny
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        photo = 255 - item_image(56, 48, box=(4 + 8 * i, 12 + 8 * i, 8, 40))  # dark bar on white, 48x56
        (folder / f"item{i}.png").write_bytes(png_bytes(photo, "RGB"))
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    np.save(folder / "pixels.npy", item_image())
    (tmp_path / "fake.png").write_text("not really a png")
    proc = run_cli("predict", str(run_dir), str(folder), str(tmp_path / "fake.png"), str(tmp_path / "missing.jpg"),
                   "--json", "-k", "2", env=isolated_env)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    payload = json.loads(proc.stdout)
    assert [Path(p["file"]).name for p in payload["predictions"]] == [
        "item0.png",
        "item1.png",
        "item2.png",
        "pixels.npy",
    ]
    assert all(
        len(p["top"]) == 2 and p["top"][0]["probability"] >= p["top"][1]["probability"] for p in payload["predictions"]
    )
    assert {Path(e["file"]).name for e in payload["errors"]} == {"fake.png", "missing.jpg"}
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 2 and all(line.startswith("error: ") for line in errors), proc.stderr

    proc = run_cli("predict", str(run_dir), str(folder / "pixels.npy"), "--no-preprocess", env=isolated_env)
    assert proc.returncode == 0 and "pixels.npy" in proc.stdout and "%" in proc.stdout, proc.stderr
    proc = run_cli("predict", str(run_dir), str(folder / "item0.png"), "--no-preprocess", env=isolated_env)
    assert proc.returncode == 1 and "must be 28x28" in proc.stderr
    proc = run_cli("predict", str(tmp_path / "no-run"), str(folder / "item0.png"), env=isolated_env)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


# -- real data --------------------------------------------------------------------------------------


@pytest.fixture
def real(request, real_data_dir: Path):
    from fmnist.data.sources import resolve_dataset

    return cached_real_run(request, real_data_dir), resolve_dataset(real_data_dir)


@pytest.mark.slow
def test_preprocessing_keeps_dataset_images_and_recovers_photos(real):
    run_dir, dataset = real
    predictor = Predictor(run_dir, backend="onnx")
    rng = np.random.default_rng(0)
    pick = rng.choice(len(dataset.test_images), size=200, replace=False)
    originals = dataset.test_images[pick]
    plain = predictor.probabilities(originals).argmax(1)

    same = np.stack([to_dataset_form(img.astype(np.float32)) for img in originals])
    assert (predictor.probabilities(same).argmax(1) == plain).mean() >= 0.99

    photos = np.stack([to_dataset_form(decode_image(as_photo(img, rng))) for img in originals])
    agreement = (predictor.probabilities(photos).argmax(1) == plain).mean()
    assert agreement >= 0.90, f"photo-like copies classified like the originals only {100 * agreement:.1f}% of the time"
