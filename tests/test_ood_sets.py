"""OOD sets: deterministic, well-typed, roles fixed and disjoint, and built as documented."""

from __future__ import annotations

import numpy as np
import pytest

from fmnist.data import ood_sets


def _garments(n: int = 50) -> np.ndarray:
    return np.random.default_rng(9).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def test_roles_are_disjoint_and_cover_every_set():
    roles = [ood_sets.SCREENING, ood_sets.HELD_OUT, ood_sets.AMBIGUOUS]
    assert sorted(sum(map(list, roles), [])) == sorted(ood_sets.SETS)
    assert len(set(ood_sets.SETS)) == len(ood_sets.SETS)


@pytest.mark.parametrize("name", ood_sets.SETS)
def test_each_set_is_deterministic_uint8_28x28(name):
    first = ood_sets.build(name, 40, seed=3, garments=_garments())
    assert first.dtype == np.uint8 and first.shape == (40, 28, 28)
    assert np.array_equal(first, ood_sets.build(name, 40, seed=3, garments=_garments()))
    assert not np.array_equal(first, ood_sets.build(name, 40, seed=4, garments=_garments()))
    assert first.std() > 0  # not all one value (blank images differ from each other)


def test_garment_sets_are_exact_transforms_of_the_given_images():
    g = _garments()
    inverted = ood_sets.build("inverted", 30, garments=g)
    originals = {item.tobytes() for item in g}
    assert all((255 - image).tobytes() in originals for image in inverted)
    rotated = ood_sets.build("rotated", 30, garments=g)
    for image in rotated:
        assert np.rot90(image, 1).tobytes() in originals or np.rot90(image, 3).tobytes() in originals
    with pytest.raises(ValueError, match="garments"):
        ood_sets.build("inverted", 5)


@pytest.mark.parametrize("name", ["digits", "letters"])
def test_glyphs_are_mnist_centred(name):
    images = ood_sets.build(name, 60).astype(np.float64)
    ys, xs = np.mgrid[:28, :28]
    for image in images:
        mass = image.sum()
        # Centre of mass within a pixel of the frame's centre (13.5, 13.5), ink inside a 20x20 box.
        assert abs((image * ys).sum() / mass - 13.5) <= 1.0
        assert abs((image * xs).sum() / mass - 13.5) <= 1.0
        rows, cols = np.nonzero(image.any(1))[0], np.nonzero(image.any(0))[0]
        assert max(np.ptp(rows), np.ptp(cols)) + 1 <= 20


def test_unknown_set_is_refused():
    with pytest.raises(ValueError, match="unknown OOD set"):
        ood_sets.build("cats")
