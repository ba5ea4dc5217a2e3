"""Stratified split and the tensor-resident loader with batched augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmnist.data.loader import Augmentation, TensorLoader
from fmnist.data.splits import stratified_split


def test_stratified_split_is_exact_balanced_and_seeded():
    labels = np.repeat(np.arange(10), 600).astype(np.uint8)
    train, val = stratified_split(labels, 500, seed=3)
    assert len(val) == 500 and len(train) == 5500
    assert not set(train) & set(val)
    assert np.bincount(labels[val], minlength=10).tolist() == [50] * 10
    again_train, again_val = stratified_split(labels, 500, seed=3)
    np.testing.assert_array_equal(val, again_val)
    assert not np.array_equal(val, stratified_split(labels, 500, seed=4)[1])


def test_stratified_split_with_uneven_classes_sums_to_request():
    labels = np.array([0] * 7 + [1] * 3 + [2] * 90, dtype=np.uint8)
    _, val = stratified_split(labels, 10, seed=0)
    assert len(val) == 10
    counts = np.bincount(labels[val], minlength=3)
    assert counts[2] == 9 and counts.sum() == 10


def test_zero_validation_and_too_large():
    labels = np.zeros(20, dtype=np.uint8)
    train, val = stratified_split(labels, 0, seed=0)
    assert len(train) == 20 and len(val) == 0
    with pytest.raises(ValueError):
        stratified_split(labels, 20, seed=0)


def _loader(n=50, **kw):
    images = torch.arange(n, dtype=torch.uint8).repeat_interleave(784).reshape(n, 28, 28)
    labels = torch.arange(n) % 10
    return TensorLoader(images, labels, batch_size=16, mean=0.0, std=1.0, **kw)


def test_each_epoch_visits_every_image_once_in_a_new_order():
    loader = _loader(shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(loader) == 4
    first = torch.cat([x[:, 0, 0, 0] for x, *_ in loader])
    second = torch.cat([x[:, 0, 0, 0] for x, *_ in loader])
    expected = torch.arange(50, dtype=torch.float32) / 255
    assert torch.equal(first.sort().values, expected)
    assert torch.equal(second.sort().values, expected)
    assert not torch.equal(first, second)


def test_normalisation_happens_once_at_construction():
    images = torch.full((4, 28, 28), 255, dtype=torch.uint8)
    loader = TensorLoader(images, torch.zeros(4, dtype=torch.long), batch_size=4, mean=0.5, std=0.25)
    x, *_ = next(iter(loader))
    assert x.shape == (4, 1, 28, 28) and torch.allclose(x, torch.full_like(x, 2.0))


def test_flip_mirrors_exactly_the_chosen_images():
    images = torch.zeros(64, 28, 28, dtype=torch.uint8)
    images[:, :, 0] = 255  # a bright left column
    loader = TensorLoader(images, torch.zeros(64, dtype=torch.long), batch_size=64, mean=0, std=1,
                          augmentation=Augmentation(flip=True), generator=torch.Generator().manual_seed(1))  # fmt: skip
    x, *_ = next(iter(loader))
    left, right = x[:, 0, :, 0], x[:, 0, :, -1]
    flipped = (right == 1).all(1)
    assert torch.equal(flipped, ~(left == 1).all(1))
    assert 10 < int(flipped.sum()) < 54


def test_translate_shifts_within_range_and_fills_background():
    images = torch.zeros(200, 28, 28, dtype=torch.uint8)
    images[:, 13, 13] = 255
    loader = TensorLoader(images, torch.zeros(200, dtype=torch.long), batch_size=200, mean=0.5, std=0.5,
                          augmentation=Augmentation(crop_pad=2), generator=torch.Generator().manual_seed(2))  # fmt: skip
    x, *_ = next(iter(loader))
    bright = (x[:, 0] == 1.0).nonzero()
    assert len(bright) == 200  # the dot is never lost at a 2-pixel shift from the centre
    assert bright[:, 1].min() >= 11 and bright[:, 1].max() <= 15
    assert bright[:, 2].min() >= 11 and bright[:, 2].max() <= 15
    assert len(torch.unique(bright[:, 1:], dim=0)) == 25  # all 5x5 offsets occur
    assert torch.all((x == 1.0) | (x == -1.0))  # everything else is the background value


def test_random_erasing_blanks_a_rectangle_in_about_the_requested_share():
    images = torch.full((400, 28, 28), 255, dtype=torch.uint8)
    loader = TensorLoader(images, torch.zeros(400, dtype=torch.long), batch_size=400, mean=0, std=1,
                          augmentation=Augmentation(erase=0.5), generator=torch.Generator().manual_seed(3))  # fmt: skip
    x, *_ = next(iter(loader))
    erased = (x[:, 0] == 0).flatten(1).sum(1)
    chosen = erased > 0
    assert 150 < int(chosen.sum()) < 250
    fractions = erased[chosen].float() / 784
    assert fractions.min() >= 0.005 and fractions.max() <= 0.3
    for img in x[chosen][:20, 0]:
        rows, cols = (img == 0).nonzero(as_tuple=True)
        assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # a full rectangle


def test_same_generator_seed_gives_identical_batches():
    def batches(seed):
        loader = _loader(shuffle=True, augmentation=Augmentation(True, 2, 0.5),
                         generator=torch.Generator().manual_seed(seed))  # fmt: skip
        return [x for x, *_ in loader]

    assert all(torch.equal(a, b) for a, b in zip(batches(5), batches(5)))
    assert not all(torch.equal(a, b) for a, b in zip(batches(5), batches(6)))
