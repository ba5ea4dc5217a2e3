"""Tensor-resident batching: the whole split lives as one tensor on the training device.

A per-sample Dataset + DataLoader spends most of a small model's step in Python; here an
epoch is one index permutation and every augmentation is a batched tensor op, so the CPU
(or GPU) spends its time in the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fmnist.constants import IMAGE_SIZE, NUM_CLASSES


@dataclass(frozen=True)
class Augmentation:
    flip: bool = False  # horizontal flip with p = 0.5 (garments are left-right symmetric)
    translate: int = 0  # random shift of up to this many pixels in x and y, zero (background) fill
    erase: float = 0.0  # probability of random erasing (one rectangle of 2-20% of the image)

    @property
    def active(self) -> bool:
        return self.flip or self.translate > 0 or self.erase > 0


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): `val_size` images held out with every class in proportion."""
    if val_size <= 0:
        return np.arange(len(labels)), np.empty(0, dtype=np.int64)
    if val_size >= len(labels):
        raise ValueError(f"validation size {val_size} must be smaller than the {len(labels)} training images")
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    # Largest-remainder rounding so the per-class quotas add up to exactly val_size.
    exact = counts * val_size / len(labels)
    quota = np.floor(exact).astype(int)
    for cls in np.argsort(-(exact - quota), kind="stable")[: val_size - quota.sum()]:
        quota[cls] += 1
    val_parts = []
    for cls in range(NUM_CLASSES):
        members = np.flatnonzero(labels == cls)
        val_parts.append(rng.permutation(members)[: quota[cls]])
    val = np.sort(np.concatenate(val_parts))
    train = np.setdiff1d(np.arange(len(labels)), val, assume_unique=True)
    return train, val


def to_model_input(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (N,28,28) -> normalised float (N,1,28,28)."""
    return ((images.float() / 255.0 - mean) / std).unsqueeze(1)


class TensorLoader:
    """Batches (x, y) from tensors held on `device`.

    `images` are uint8 (N,28,28), normalised once at construction. Shuffling and
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
        channels_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.device = torch.device(device)
        self.x = to_model_input(images.to(self.device), mean, std)
        if channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = labels.to(self.device).long()
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augmentation = augmentation or Augmentation()
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.channels_last = channels_last
        # The value a blank (zero) pixel has after normalisation: what shifts and erasing fill in.
        self.background = float((0.0 - mean) / std)

    def __len__(self) -> int:
        return (len(self.y) + self.batch_size - 1) // self.batch_size

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def epoch_order(self) -> torch.Tensor:
        if self.shuffle:
            return torch.randperm(len(self.y), generator=self.generator).to(self.device)
        return torch.arange(len(self.y), device=self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches(self.epoch_order())

    def batches(self, order: torch.Tensor, first_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of one epoch in `order`, starting at batch `first_batch` (to resume mid-epoch)."""
        for start in range(first_batch * self.batch_size, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            x = self.x[index]
            if self.augmentation.active:
                x = self.augment(x)
            yield x, self.y[index]

    # -- batched augmentation -------------------------------------------------------------
    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator).to(self.device)

    def _randint(self, high: int, n: int) -> torch.Tensor:
        return torch.randint(0, high, (n,), generator=self.generator).to(self.device)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        aug = self.augmentation
        n = x.shape[0]
        if aug.flip:
            flip = self._rand(n) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if aug.translate > 0:
            x = self._translate(x, aug.translate)
        if aug.erase > 0:
            x = self._erase(x, aug.erase)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _translate(self, x: torch.Tensor, pad: int) -> torch.Tensor:
        # Pad once, then gather a shifted 28x28 window per image with advanced indexing.
        n = x.shape[0]
        padded = F.pad(x, (pad, pad, pad, pad), value=self.background)  # (n,1,28+2p,28+2p)
        dy = self._randint(2 * pad + 1, n)
        dx = self._randint(2 * pad + 1, n)
        ar = torch.arange(IMAGE_SIZE, device=x.device)
        rows = (dy[:, None] + ar)[:, :, None]  # (n,28,1)
        cols = (dx[:, None] + ar)[:, None, :]  # (n,1,28)
        batch = torch.arange(n, device=x.device)[:, None, None]
        return padded[batch, 0, rows, cols].unsqueeze(1)

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
