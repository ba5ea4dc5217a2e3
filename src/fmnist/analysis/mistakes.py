"""Which test images to show: confident mistakes, random samples, one example per class."""

from __future__ import annotations

import numpy as np
import torch


def most_confident_mistakes(probabilities: torch.Tensor, labels: torch.Tensor, k: int = 16) -> list[int]:
    """Indices of the `k` wrong predictions made with the highest confidence, highest first."""
    confidence, predicted = probabilities.max(1)
    wrong = torch.nonzero(predicted != labels).flatten()
    order = torch.argsort(confidence[wrong], descending=True, stable=True)
    return wrong[order][:k].tolist()


def random_examples(
    predicted: torch.Tensor, labels: torch.Tensor, k: int = 5, seed: int = 0
) -> tuple[list[int], list[int]]:
    """(`k` random correct indices, `k` random incorrect ones), fewer where fewer exist."""
    rng = np.random.default_rng(seed)
    hits = (predicted == labels).numpy()
    picks = []
    for pool in (np.flatnonzero(hits), np.flatnonzero(~hits)):
        chosen = rng.choice(pool, size=min(k, len(pool)), replace=False) if len(pool) else np.empty(0, int)
        picks.append(sorted(int(i) for i in chosen))
    return picks[0], picks[1]


def one_per_class(
    probabilities: torch.Tensor, labels: torch.Tensor, correct: bool, num_classes: int = 10
) -> list[int | None]:
    """Per true class, the most confident correct (or wrong) prediction's index, or None."""
    confidence, predicted = probabilities.max(1)
    hits = predicted == labels
    chosen: list[int | None] = []
    for c in range(num_classes):
        pool = torch.nonzero((labels == c) & (hits if correct else ~hits)).flatten()
        chosen.append(int(pool[confidence[pool].argmax()]) if len(pool) else None)
    return chosen
