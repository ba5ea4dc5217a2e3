"""Corruptions: determinism, types, severity order on real images, and exact oracles where one exists."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.ndimage as ndimage

from fmnist.data.corruptions import CORRUPTIONS, PARAMETERS, SEVERITY_LEVELS, corrupt, rotate, translate
from fmnist.data.dataset import load_folder


@pytest.fixture(scope="module")
def garments() -> np.ndarray:
    """200 real test images when FMNIST_DATA is set (the monotonicity check needs real garments)."""
    folder = os.environ.get("FMNIST_DATA")
    if not folder or not os.path.isdir(folder):
        pytest.skip("FMNIST_DATA is not set to the Fashion-MNIST folder")
    return load_folder(folder).test_images[:200]


def _blobs(n: int = 64, seed: int = 0) -> np.ndarray:
    """Garment-like stand-ins: a bright filled ellipse on black, for tests that need no real data."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    out = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        cy, cx, ry, rx = rng.uniform(11, 17), rng.uniform(11, 17), rng.uniform(5, 10), rng.uniform(4, 9)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        out[i][inside] = rng.integers(120, 256)
    return out


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_same_seed_same_bytes_other_seed_other_draws(name):
    x = _blobs()
    first = corrupt(x, name, 2, seed=5)
    assert first.dtype == np.uint8 and first.shape == x.shape
    assert np.array_equal(first, corrupt(x, name, 2, seed=5))
    assert np.array_equal(x, _blobs())  # the input is left alone
    # Corruptions with random draws change with the seed (the rest are the same function of the image).
    if name in ("gaussian_noise", "shot_noise", "motion_blur", "rotation", "shear", "translation", "scaling",
                "elastic"):  # fmt: skip
        assert not np.array_equal(first, corrupt(x, name, 2, seed=6))


def test_severity_increases_the_mean_absolute_change(garments):
    for name in CORRUPTIONS:
        change = [np.abs(corrupt(garments, name, s).astype(int) - garments).mean() for s in SEVERITY_LEVELS]
        assert change[0] > 0.5, name
        assert change[0] < change[1] < change[2], (name, change)


def test_inversion_at_full_severity_is_exact_and_milder_ones_blend():
    x = _blobs()
    assert np.array_equal(corrupt(x, "inversion", 3), 255 - x)
    a = PARAMETERS["inversion"][0]
    expected = np.clip(np.round((1 - a) * x + a * (255 - x.astype(float))), 0, 255)
    assert np.abs(corrupt(x, "inversion", 1).astype(int) - expected).max() <= 1


@pytest.mark.parametrize("degrees", [15.0, -30.0, 45.0, 90.0])
def test_rotation_matches_scipy(degrees):
    x = _blobs(16)
    ours = rotate(x, degrees).astype(int)
    ref = np.stack([ndimage.rotate(i.astype(float), degrees, reshape=False, order=1, mode="grid-constant", cval=0)
                    for i in x])  # fmt: skip
    # Both interpolate bilinearly about the centre; only our rounding to uint8 differs.
    assert np.abs(ours - np.clip(np.round(ref), 0, 255)).max() <= 1
    if degrees == 90.0:
        assert np.array_equal(ours, np.rot90(x, 1, axes=(1, 2)))


def test_translation_by_whole_pixels_is_an_exact_shift():
    x = _blobs(8)
    shifted = translate(x, np.full(8, 3), np.full(8, -2))
    expected = np.zeros_like(x)
    expected[:, :-2, 3:] = x[:, 2:, :-3]
    assert np.array_equal(shifted, expected)


def test_brightness_and_contrast_against_their_formulas():
    x = _blobs()
    b = PARAMETERS["brightness"][1]
    assert np.array_equal(corrupt(x, "brightness", 2), np.clip(np.round(x + b * 255), 0, 255).astype(np.uint8))
    c = PARAMETERS["contrast"][0]
    mean = x.mean(axis=(1, 2), keepdims=True)
    expected = np.clip(np.round((x - mean) * c + mean), 0, 255)
    assert np.abs(corrupt(x, "contrast", 1).astype(int) - expected).max() <= 1


def test_pixelation_is_constant_on_blocks():
    out = corrupt(_blobs(), "pixelation", 3)  # 7x7 blocks of 4x4 pixels
    blocks = out.reshape(-1, 7, 4, 7, 4)
    assert (blocks == blocks[:, :, :1, :, :1]).all()


def test_bad_requests_are_refused():
    x = _blobs(2)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "blur", 4)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(x.astype(float), "blur", 1)


def test_jpeg_mosaic_equals_encoding_each_image_alone():
    import io

    from PIL import Image

    x = _blobs(30)
    for severity in SEVERITY_LEVELS:
        ours = corrupt(x, "jpeg", severity)
        for i in range(0, 30, 7):
            buffer = io.BytesIO()
            Image.fromarray(x[i], mode="L").save(buffer, format="JPEG", quality=int(PARAMETERS["jpeg"][severity - 1]))
            assert np.array_equal(ours[i], np.asarray(Image.open(buffer)))


def test_motion_blur_is_the_mean_of_shifted_copies_along_its_direction():
    from fmnist.data.corruptions import CORRUPTIONS as NAMES

    x = _blobs(6)
    severity = 2
    length = PARAMETERS["motion_blur"][severity - 1]
    # The same draw the corruption makes: one direction per image.
    angle = np.random.default_rng([0, NAMES.index("motion_blur"), severity]).uniform(0, np.pi, len(x))
    steps = np.linspace(-length / 2, length / 2, 4 * int(length) + 1)
    ours = corrupt(x, "motion_blur", severity).astype(int)
    for i in range(len(x)):
        shifted = [ndimage.shift(x[i].astype(float), (t * np.sin(angle[i]), t * np.cos(angle[i])), order=1,
                                 mode="grid-constant", cval=0) for t in steps]  # fmt: skip
        assert np.abs(ours[i] - np.clip(np.round(np.mean(shifted, axis=0)), 0, 255)).max() <= 1
