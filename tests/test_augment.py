"""Batched augmentations: crops are shifted copies, mixup/cutmix conserve label mass, seeds reproduce."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fmnist.constants import FMNIST_MEAN, FMNIST_STD
from fmnist.data.augment import cutmix, downscale, mixup, random_crop, soft_targets
from fmnist.data.dataset import load_idx_folder

BLACK = -FMNIST_MEAN / FMNIST_STD  # a zero pixel after normalisation
FAST = settings(max_examples=25, deadline=None)


def _batch(seed: int, n: int, channels: int = 1, size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def _shift(image: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    """`image` (C,H,W) moved down by dy and right by dx, the uncovered border set to fill (loop-free reference)."""
    _, h, w = image.shape
    out = torch.full_like(image, fill)
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[:, max(-dy, 0) : h - max(dy, 0),
                                                                               max(-dx, 0) : w - max(dx, 0)]  # fmt: skip
    return out


@FAST
@given(seed=st.integers(0, 2**31), n=st.integers(1, 6), pad=st.integers(0, 5), channels=st.sampled_from([1, 3]))
def test_random_crop_is_a_shifted_copy_of_each_image(seed: int, n: int, pad: int, channels: int):
    x, _ = _batch(seed, n, channels)
    out = random_crop(x, pad, torch.Generator().manual_seed(seed), fill=BLACK)
    assert out.shape == x.shape and out.dtype == x.dtype
    for i in range(n):
        matches = [(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)
                   if torch.equal(out[i], _shift(x[i], dy, dx, BLACK))]  # fmt: skip
        assert len(matches) == 1  # random content: exactly one shift explains the crop


def test_random_crop_draws_every_offset_and_fills_with_the_given_value():
    x = torch.zeros(2000, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1.0  # a bright square on black, so its position gives the offset
    out = random_crop(x, 2, torch.Generator().manual_seed(0), fill=-7.0)
    tops = out[:, 0].eq(1).float().argmax(1).max(1).values  # first row with the square
    lefts = out[:, 0].eq(1).float().argmax(2).max(1).values
    assert set(tops.tolist()) == set(range(8, 13)) and set(lefts.tolist()) == set(range(8, 13))
    counts = torch.bincount((tops - 8) * 5 + (lefts - 8), minlength=25)
    assert counts.min() > 40  # 25 offsets, about 80 each
    border = out.eq(-7.0)
    assert border.any() and torch.isin(out.unique(), torch.tensor([-7.0, 0.0, 1.0])).all()


def test_random_crop_rejects_bad_arguments_and_pad_zero_is_identity():
    x, _ = _batch(0, 3)
    assert random_crop(x, 0, torch.Generator(), fill=BLACK) is x
    with pytest.raises(ValueError, match="pad"):
        random_crop(x, -1, torch.Generator(), fill=BLACK)
    with pytest.raises(ValueError, match="batch"):
        random_crop(x[0], 2, torch.Generator(), fill=BLACK)


@FAST
@given(seed=st.integers(0, 2**31), n=st.integers(1, 8), alpha=st.floats(0.05, 4.0), soft=st.booleans())
def test_mixup_blends_images_and_labels_with_the_same_weight(seed: int, n: int, alpha: float, soft: bool):
    x, y = _batch(seed, n)
    labels = F.softmax(torch.randn(n, 10, generator=torch.Generator().manual_seed(seed)), 1) if soft else y
    mixed = mixup(x, labels, alpha, torch.Generator().manual_seed(seed))
    own = soft_targets(labels)
    assert sorted(mixed.partner.tolist()) == list(range(n))
    assert ((mixed.lam >= 0) & (mixed.lam <= 1)).all()
    lam = mixed.lam[:, None]
    torch.testing.assert_close(mixed.targets, lam * own + (1 - lam) * own[mixed.partner])
    torch.testing.assert_close(mixed.targets.sum(1), torch.ones(n))
    torch.testing.assert_close(mixed.images, lam[:, :, None, None] * x + (1 - lam[:, :, None, None]) * x[mixed.partner])


@FAST
@given(seed=st.integers(0, 2**31), n=st.integers(2, 8), alpha=st.floats(0.05, 4.0))
def test_cutmix_pastes_one_box_and_lam_is_the_share_of_own_pixels(seed: int, n: int, alpha: float):
    # Each image is constant (its index), so every output pixel says where it came from.
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 28, 28).contiguous()
    y = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed))
    mixed = cutmix(x, y, alpha, torch.Generator().manual_seed(seed))
    own = F.one_hot(y, 10).float()
    lam = mixed.lam[:, None]
    torch.testing.assert_close(mixed.targets, lam * own + (1 - lam) * own[mixed.partner])
    torch.testing.assert_close(mixed.targets.sum(1), torch.ones(n))
    for i in range(n):
        j = int(mixed.partner[i])
        image = mixed.images[i, 0]
        assert torch.isin(image.unique(), torch.tensor([float(i), float(j)])).all()
        if i == j:
            continue
        pasted = image.eq(j)
        assert float(mixed.lam[i]) == pytest.approx(1 - pasted.float().mean().item())
        if pasted.any():  # the pasted pixels form one axis-aligned rectangle
            rows, cols = pasted.any(1).nonzero().flatten(), pasted.any(0).nonzero().flatten()
            assert pasted[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
            assert int(pasted.sum()) == len(rows) * len(cols)


def test_cutmix_lam_follows_the_beta_draw_on_average():
    # The drawn lam has mean 1/2; clipping at the border only shrinks boxes, so the real lam's
    # mean lies above it (about 0.68 for boxes centred uniformly), and a near-full box still occurs.
    x, y = _batch(0, 4000)
    lam = cutmix(x, y, 1.0, torch.Generator().manual_seed(1)).lam
    assert 0.6 < float(lam.mean()) < 0.75 and float(lam.min()) < 0.2


@pytest.mark.parametrize("mix", [mixup, cutmix])
def test_same_seed_same_batch_and_another_seed_differs(mix):
    x, y = _batch(3, 16)
    first = mix(x, y, 0.4, torch.Generator().manual_seed(5))
    again = mix(x, y, 0.4, torch.Generator().manual_seed(5))
    other = mix(x, y, 0.4, torch.Generator().manual_seed(6))
    assert torch.equal(first.images, again.images) and torch.equal(first.targets, again.targets)
    assert not torch.equal(first.images, other.images)
    crop = [random_crop(x, 2, torch.Generator().manual_seed(s), fill=BLACK) for s in (5, 5, 6)]
    assert torch.equal(crop[0], crop[1]) and not torch.equal(crop[0], crop[2])


@pytest.mark.parametrize("mix", [mixup, cutmix])
def test_alpha_zero_disables_and_draws_nothing(mix):
    x, y = _batch(0, 8)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    out = mix(x, y, 0.0, g)
    assert out.images is x and torch.equal(out.targets, F.one_hot(y, 10).float())
    assert torch.equal(out.lam, torch.ones(8)) and torch.equal(g.get_state(), state)
    with pytest.raises(ValueError, match="alpha"):
        mix(x, y, -0.1, g)
    with pytest.raises(ValueError, match="targets"):
        mix(x, torch.zeros(8, 3), 0.4, g)


def test_soft_targets_train_with_cross_entropy_and_label_smoothing():
    # F.cross_entropy takes probability targets: a one-hot row gives the hard-label loss, smoothing included.
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6)
    for smoothing in (0.0, 0.1):
        hard = F.cross_entropy(logits, y, label_smoothing=smoothing)
        soft = F.cross_entropy(logits, soft_targets(y), label_smoothing=smoothing)
        torch.testing.assert_close(hard, soft)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_batches_get_the_cpu_draws():
    x, y = _batch(0, 32)
    for fn in (lambda b, g: random_crop(b, 3, g, fill=BLACK), lambda b, g: mixup(b, y.to(b.device), 0.4, g).images,
               lambda b, g: cutmix(b, y.to(b.device), 1.0, g).images):  # fmt: skip
        cpu = fn(x, torch.Generator().manual_seed(1))
        gpu = fn(x.cuda(), torch.Generator().manual_seed(1))
        torch.testing.assert_close(gpu.cpu(), cpu)


def test_augmentations_on_real_images_keep_the_background(real_data_dir):
    data = load_idx_folder(real_data_dir)
    x = ((torch.from_numpy(np.asarray(data.train_images[:256])).float() / 255 - FMNIST_MEAN) / FMNIST_STD)[:, None]
    y = torch.from_numpy(np.asarray(data.train_labels[:256])).long()
    cropped = random_crop(x, 4, torch.Generator().manual_seed(0), fill=BLACK)
    # Back in pixel units the crop holds only the original 0-255 values: the filled border is
    # black (a fill of 0.0 would have added grey 73s), and pixels are only lost, never made.
    pixels = (cropped * FMNIST_STD + FMNIST_MEAN) * 255
    torch.testing.assert_close(pixels, pixels.round(), atol=1e-3, rtol=0)
    lit_before, lit_after = (x > BLACK + 1e-4).flatten(1).sum(1), (pixels.round() > 0).flatten(1).sum(1)
    assert (lit_after <= lit_before).all() and lit_after.sum() > 0.9 * lit_before.sum()
    mixed = cutmix(x, y, 1.0, torch.Generator().manual_seed(0))
    assert mixed.targets.argmax(1).eq(y).float().mean() > 0.5


def test_downscale_keeps_what_a_resize_must_keep():
    x, _ = _batch(0, 8)
    small = downscale(x, 24)
    assert small.shape == (8, 1, 24, 24) and small.dtype == x.dtype
    assert downscale(x, 28) is x  # the full size is left alone
    flat = torch.full((2, 1, 28, 28), 0.7)
    torch.testing.assert_close(downscale(flat, 24), torch.full((2, 1, 24, 24), 0.7))
    # linear in the pixels: it commutes with normalisation, so the loader can resize after it
    torch.testing.assert_close(downscale(2 * x - 1, 24), 2 * downscale(x, 24) - 1, atol=1e-5, rtol=0)
    # a mirrored image downscales to the mirror of its downscale (flips before resizing lose nothing)
    torch.testing.assert_close(downscale(x.flip(3), 24), downscale(x, 24).flip(3), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="expects a batch"):
        downscale(x[0], 24)
