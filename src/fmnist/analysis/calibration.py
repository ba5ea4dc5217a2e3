"""Calibration summary: how far a model's confidence is from how often it is right."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fmnist.analysis import metrics

# Equal-width confidence bins of the ECE and the reliability diagram, wherever they are computed.
DEFAULT_BINS = 15


@dataclass(frozen=True)
class Calibration:
    ece: float
    mean_confidence: float
    accuracy: float
    bins: list[dict]

    @property
    def gap(self) -> float:
        """Mean confidence minus accuracy: > 0 over-confident, < 0 under-confident."""
        return self.mean_confidence - self.accuracy


def calibration(probabilities: torch.Tensor, labels: torch.Tensor, bins: int) -> Calibration:
    confidence, predicted = probabilities.max(1)
    return Calibration(
        ece=metrics.expected_calibration_error(probabilities, labels, bins),
        mean_confidence=confidence.double().mean().item(),
        accuracy=metrics.accuracy(labels, predicted),
        bins=metrics.reliability_bins(probabilities, labels, bins),
    )


def confident_accuracy(probabilities: torch.Tensor, labels: torch.Tensor, threshold: float) -> tuple[int, float]:
    """(count, accuracy) of the predictions made with confidence >= threshold."""
    confidence, predicted = probabilities.max(1)
    sure = confidence >= threshold
    count = int(sure.sum())
    return count, (metrics.accuracy(labels[sure], predicted[sure]) if count else float("nan"))
