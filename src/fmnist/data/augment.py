"""Batched augmentations: random crops, mixup, cutmix and downscaling as tensor ops on the batch's own device.

Every random number is drawn on the CPU from the caller's torch.Generator and then moved to
the batch's device (fmnist.device.to_device: without waiting for the GPU), so a seed gives the
same draws on a CPU and on a GPU, and saving the generator's state is enough to resume exactly.

Inputs are normalised images (N,C,H,W). Mixing normalised images equals normalising mixed
pixels (normalisation is affine and the weights sum to 1), so mixup can run after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fmnist.constants import NUM_CLASSES
from fmnist.device import to_device


@dataclass(frozen=True)
class Mixed:
    """A mixed batch: each image i is a blend of itself and image `partner[i]` of the same batch.

    `targets` (N,classes) are soft labels, each row a probability vector:
    `lam[i] * own label + (1 - lam[i]) * partner's label`. With mixup `lam` is the blend
    weight; with cutmix it is the share of the image's own pixels left outside the pasted box.
    """

    images: torch.Tensor  # (N,C,H,W), the input's dtype and device
    targets: torch.Tensor  # (N,classes) float32, rows sum to 1
    lam: torch.Tensor  # (N,) float32 in [0, 1], weight of the image's own label
    partner: torch.Tensor  # (N,) int64, the index of the other source


def _uniform(generator: torch.Generator, n: int, device: torch.device) -> torch.Tensor:
    return to_device(torch.rand(n, generator=generator), device)


def _beta(generator: torch.Generator, alpha: float, n: int) -> torch.Tensor:
    # torch's Beta sampler takes no generator; NumPy's does, seeded from the caller's generator
    # so the draws stay tied to it.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, n)).float()


def _check_alpha(alpha: float) -> None:
    if not alpha >= 0:  # also rejects NaN
        raise ValueError(f"alpha must be >= 0 (0 disables), not {alpha!r}")


def soft_targets(y: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Labels (N,) -> one-hot float32 (N,classes); soft targets (N,classes) pass through as float32."""
    if y.dim() == 1:
        return F.one_hot(y.long(), num_classes).float()
    if y.dim() == 2 and y.shape[1] == num_classes:
        return y.float()
    raise ValueError(f"targets must be labels (N,) or probabilities (N,{num_classes}), got shape {tuple(y.shape)}")


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator, *, fill: float) -> torch.Tensor:
    """Pad each image by `pad` pixels of `fill`, then cut an HxW window at a random offset per image.

    The result is the image shifted by up to `pad` pixels in each direction, the uncovered
    border set to `fill`. Pass the value a black pixel has after normalisation (for
    normalised Fashion-MNIST, -mean/std): zero is black only for unnormalised images.
    """
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be a non-negative integer, not {pad!r}")
    if x.dim() != 4:
        raise ValueError(f"random_crop expects a batch (N,C,H,W), got shape {tuple(x.shape)}")
    if pad == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=fill)  # (N,C,H+2p,W+2p)
    top = to_device(torch.randint(0, 2 * pad + 1, (n,), generator=generator), x.device)
    left = to_device(torch.randint(0, 2 * pad + 1, (n,), generator=generator), x.device)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (N,H,1)
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (N,1,W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # One gather for the whole batch; advanced indices around the channel slice put it last.
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # (N,C,H,W)


def downscale(x: torch.Tensor, side: int) -> torch.Tensor:
    """Images (N,C,H,W) resized to (N,C,side,side), antialiased, as progressive resizing trains on them.

    Bilinear resizing is linear in the pixels, so it commutes with normalisation and can follow it.
    """
    if x.dim() != 4:
        raise ValueError(f"downscale expects a batch (N,C,H,W), got shape {tuple(x.shape)}")
    if x.shape[-2:] == (side, side):
        return x
    return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)


def _unmixed(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> Mixed:
    n = x.shape[0]
    return Mixed(x, soft_targets(y, num_classes).to(x.device), torch.ones(n, device=x.device),
                 torch.arange(n, device=x.device))  # fmt: skip


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, generator: torch.Generator,
          num_classes: int = NUM_CLASSES) -> Mixed:  # fmt: skip
    """Mixup (Zhang et al. 2018): blend each image with a random partner, lam ~ Beta(alpha, alpha) per image.

    `y` is labels (N,) or soft targets (N,classes). `alpha` = 0 returns the batch unchanged
    with one-hot targets and draws nothing from the generator.
    """
    _check_alpha(alpha)
    if alpha == 0 or x.shape[0] == 0:
        return _unmixed(x, y, num_classes)
    n = x.shape[0]
    own = soft_targets(y, num_classes).to(x.device)
    partner = to_device(torch.randperm(n, generator=generator), x.device)
    lam = to_device(_beta(generator, alpha, n), x.device)
    weight = lam.to(x.dtype).view(n, *([1] * (x.dim() - 1)))
    images = weight * x + (1 - weight) * x[partner]
    return Mixed(images, lam[:, None] * own + (1 - lam[:, None]) * own[partner], lam, partner)


def cutmix(x: torch.Tensor, y: torch.Tensor, alpha: float, generator: torch.Generator,
           num_classes: int = NUM_CLASSES) -> Mixed:  # fmt: skip
    """CutMix (Yun et al. 2019): paste a random box of a partner image, box area ~ 1 - lam, lam ~ Beta(alpha, alpha).

    The box is centred uniformly in the image and clipped at its border, so its real area
    can be smaller than drawn; `lam` is then recomputed from the real area, so the label
    mass matches the pixels. `alpha` = 0 returns the batch unchanged with one-hot targets.
    """
    _check_alpha(alpha)
    if alpha == 0 or x.shape[0] == 0:
        return _unmixed(x, y, num_classes)
    n, _, h, w = x.shape
    own = soft_targets(y, num_classes).to(x.device)
    partner = to_device(torch.randperm(n, generator=generator), x.device)
    drawn = to_device(_beta(generator, alpha, n), x.device)
    centre_y = (_uniform(generator, n, x.device) * h).floor()
    centre_x = (_uniform(generator, n, x.device) * w).floor()
    side = torch.sqrt(1 - drawn)  # the box covers (1 - lam) of the area before clipping
    half_h, half_w = (side * h / 2).round(), (side * w / 2).round()
    top, bottom = (centre_y - half_h).clamp(0, h), (centre_y + half_h).clamp(0, h)
    left, right = (centre_x - half_w).clamp(0, w), (centre_x + half_w).clamp(0, w)
    ys = torch.arange(h, device=x.device, dtype=top.dtype)
    xs = torch.arange(w, device=x.device, dtype=top.dtype)
    in_rows = (ys >= top[:, None]) & (ys < bottom[:, None])  # (N,H)
    in_cols = (xs >= left[:, None]) & (xs < right[:, None])  # (N,W)
    box = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (N,1,H,W)
    images = torch.where(box, x[partner], x)
    lam = 1 - (bottom - top) * (right - left) / (h * w)
    return Mixed(images, lam[:, None] * own + (1 - lam[:, None]) * own[partner], lam, partner)
