"""Seeded, stratified splits: the validation hold-out and class-balanced subsamples."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fmnist.constants import NUM_CLASSES

# split_seed's value meaning "no seed of its own: the run's seed draws the hold-out", so each seed of
# a study holds out other images. The default is a split seed of its own (0, which draws what seed 0's
# run always drew), so runs of one model with different seeds share their validation split.
FOLLOW_RUN_SEED = -1
SHARED_SPLIT_SEED = 0


def holdout_seed(seed: int, split_seed: int = FOLLOW_RUN_SEED) -> int:
    """The seed that draws a run's validation hold-out: its split_seed when set, else its seed."""
    return seed if split_seed == FOLLOW_RUN_SEED else split_seed


def saved_split_seed(config: Mapping[str, Any]) -> int:
    """A saved run's split_seed (config.toml, resumable state): a file without one was written before
    split_seed existed (fmnist 0.3.1 and before), when the run's seed drew the hold-out."""
    return int(config.get("split_seed", FOLLOW_RUN_SEED))


def saved_holdout(config: Mapping[str, Any]) -> tuple[int, int]:
    """(val_size, hold-out seed) of a run from its saved config values (config.toml)."""
    val_size, seed = int(config.get("val_size", 0) or 0), int(config.get("seed", 0) or 0)
    return val_size, holdout_seed(seed, saved_split_seed(config))


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


def stratified_subsample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of exactly `n` items with every class in proportion (all when n >= len)."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    return stratified_split(labels, n, seed)[1]
