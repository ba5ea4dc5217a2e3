"""Tensor-resident batching: the whole split lives as one uint8 tensor on the training device.

A per-sample Dataset + DataLoader spends most of a small model's step in Python; here an
epoch is one index permutation and every augmentation is a batched tensor op, so the CPU
(or GPU) spends its time in the model. Images stay uint8 (a quarter of float32's memory on a
GPU) and each batch is normalised as it is drawn: the same values as normalising the split once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from fmnist.constants import IMAGE_SIZE
from fmnist.data.augment import cutmix, downscale, mixup, random_crop
from fmnist.data.normalize import blank_value, normalize
from fmnist.device import to_device


class Batch(NamedTuple):
    x: torch.Tensor  # (N,1,side,side) normalised, augmented; 28x28 unless downscaled
    y: torch.Tensor  # (N,) class indices
    targets: torch.Tensor  # (N,) class indices, or (N,10) soft targets after mixing


@dataclass(frozen=True)
class Augmentation:
    flip: bool = False  # horizontal flip with p = 0.5 (garments are left-right symmetric)
    crop_pad: int = 0  # pad by N background pixels, crop back to 28x28: a shift of up to N pixels
    erase: float = 0.0  # probability of random erasing (one rectangle of 2-20% of the image)
    mixup: float = 0.0  # Beta(alpha, alpha) of mixup; 0 = off
    cutmix: float = 0.0  # Beta(alpha, alpha) of cutmix; 0 = off (with mixup too, each batch picks one)

    @property
    def active(self) -> bool:
        return self.flip or self.crop_pad > 0 or self.erase > 0 or self.mixes

    @property
    def mixes(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    @classmethod
    def from_config(cls, config) -> Augmentation:
        return cls(config.flip, config.crop_pad, config.erase, config.mixup, config.cutmix)


class TensorLoader:
    """Batches (x, y) from tensors held on `device`.

    `images` are uint8 (N,28,28), kept so on `device`, normalised per batch. Shuffling and
    augmentation draw from `generator` (a torch.Generator on the CPU), whose state can be
    saved and restored for exact resumption.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: float,
        std: float,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        augmentation: Augmentation | None = None,
        generator: torch.Generator | None = None,
        layout: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
        soft_targets: torch.Tensor | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.mean, self.std = mean, std
        self.y = labels.to(self.device).long()
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augmentation = augmentation or Augmentation()
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.layout = layout  # the model's memory layout (fmnist.models.base.Classifier.layout)
        # (N,C) per-image targets in place of the labels: a teacher's, mixed with them (fmnist.training.distill)
        self.soft_targets = None if soft_targets is None else soft_targets.to(self.device)
        if self.soft_targets is not None and self.augmentation.mixes:
            raise ValueError("soft targets and mixup/cutmix do not combine")
        self.background = blank_value(mean, std)  # what shifts and erasing fill in

    def __len__(self) -> int:
        return (len(self.y) + self.batch_size - 1) // self.batch_size

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def epoch_order(self) -> torch.Tensor:
        if self.shuffle:
            return to_device(torch.randperm(len(self.y), generator=self.generator), self.device)
        return torch.arange(len(self.y), device=self.device)

    def __iter__(self) -> Iterator[Batch]:
        return self.batches(self.epoch_order())

    def batches(self, order: torch.Tensor, first_batch: int = 0, side: int = IMAGE_SIZE) -> Iterator[Batch]:
        """Batches of one epoch in `order`, starting at batch `first_batch` (to resume mid-epoch).

        Each is (images, labels, targets): targets are the labels, or soft (N,10) targets where the
        augmentation mixes images (mixup, cutmix) or the loader holds a teacher's. Images come out
        `side` pixels square: augmented at 28x28, then downscaled (progressive resizing's early epochs).
        """
        for start in range(first_batch * self.batch_size, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            x, y = normalize(self.images[index], self.mean, self.std), self.y[index]
            targets: torch.Tensor = y if self.soft_targets is None else self.soft_targets[index]
            if self.augmentation.active:
                x = self.augment(x)
            if self.augmentation.mixes:
                x, targets = self.mix(x, y)
            yield Batch(self.layout(downscale(x, side)), y, targets)

    # -- batched augmentation -------------------------------------------------------------
    def _rand(self, *shape: int) -> torch.Tensor:
        return to_device(torch.rand(shape, generator=self.generator), self.device)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        aug = self.augmentation
        n = x.shape[0]
        if aug.flip:
            flip = self._rand(n) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if aug.crop_pad > 0:
            x = random_crop(x, aug.crop_pad, self.generator, fill=self.background)
        if aug.erase > 0:
            x = self._erase(x, aug.erase)
        return x

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup or cutmix (a coin picks one per batch when both are on): images and soft targets."""
        aug = self.augmentation
        use_cutmix = aug.cutmix > 0 and (aug.mixup == 0 or bool(torch.rand((), generator=self.generator) < 0.5))
        mixed = (cutmix(x, y, aug.cutmix, self.generator) if use_cutmix
                 else mixup(x, y, aug.mixup, self.generator))  # fmt: skip
        return mixed.images, mixed.targets

    def _erase(self, x: torch.Tensor, probability: float) -> torch.Tensor:
        # One rectangle per chosen image, area 2-20% of the image, aspect ratio 0.3-3.3.
        n = x.shape[0]
        area = (0.02 + 0.18 * self._rand(n)) * IMAGE_SIZE * IMAGE_SIZE
        log_ratio = np.log(0.3) + (np.log(3.3) - np.log(0.3)) * self._rand(n)
        ratio = torch.exp(log_ratio)
        h = torch.sqrt(area * ratio).round().clamp(1, IMAGE_SIZE)
        w = torch.sqrt(area / ratio).round().clamp(1, IMAGE_SIZE)
        top = (self._rand(n) * (IMAGE_SIZE - h + 1)).floor()
        left = (self._rand(n) * (IMAGE_SIZE - w + 1)).floor()
        chosen = self._rand(n) < probability
        ar = torch.arange(IMAGE_SIZE, device=x.device, dtype=h.dtype)
        in_rows = (ar[None, :] >= top[:, None]) & (ar[None, :] < (top + h)[:, None])  # (n,28)
        in_cols = (ar[None, :] >= left[:, None]) & (ar[None, :] < (left + w)[:, None])
        mask = in_rows[:, :, None] & in_cols[:, None, :] & chosen[:, None, None]  # (n,28,28)
        return x.masked_fill(mask[:, None], self.background)
