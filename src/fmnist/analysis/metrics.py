"""Classification metrics as pure functions of labels, predictions and logits (torch tensors).

Each is checked against scikit-learn or a hand-computed example in tests/test_metrics.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import torch
import torch.nn.functional as F

from fmnist.constants import CLASS_NAMES, NUM_CLASSES


def accuracy(y_true: torch.Tensor, y_pred: torch.Tensor) -> float:
    if len(y_true) == 0:
        return float("nan")
    return (y_true == y_pred).float().mean().item()


def cross_entropy(logits: torch.Tensor, y_true: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true class (sklearn's log_loss on softmax probabilities)."""
    return F.cross_entropy(logits.float(), y_true.long()).item()


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """(C, C) int64 counts; row = true class, column = predicted class (sklearn's convention)."""
    index = y_true.long() * num_classes + y_pred.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass(frozen=True)
class ClassReport:
    name: str
    precision: float
    recall: float  # equals the per-class accuracy: correct / total of that true class
    f1: float
    support: int
    correct: int

    @property
    def errors(self) -> int:
        return self.support - self.correct


class ClassRow(TypedDict):
    """One class of `per_class` in results.json: a ClassReport's fields, its accuracy and errors."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int
    correct: int
    accuracy: float  # the recall: correct / images of the class
    errors: int


class ConfusedRow(TypedDict):
    """One of `most_confused` in results.json: how often images of `true` were taken for `predicted`."""

    true: str
    predicted: str
    count: int
    fraction_of_true: float


def per_class_report(cm: torch.Tensor, class_names: tuple[str, ...] = CLASS_NAMES) -> list[ClassReport]:
    """Precision, recall, F1 per class from a confusion matrix; 0 where undefined (sklearn's zero_division=0)."""
    cm = cm.double()
    true_positive = cm.diag()
    predicted = cm.sum(0)
    actual = cm.sum(1)
    precision = torch.where(predicted > 0, true_positive / predicted.clamp(min=1), torch.zeros_like(predicted))
    recall = torch.where(actual > 0, true_positive / actual.clamp(min=1), torch.zeros_like(actual))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(denom))
    return [
        ClassReport(
            name=class_names[c],
            precision=precision[c].item(),
            recall=recall[c].item(),
            f1=f1[c].item(),
            support=int(actual[c].item()),
            correct=int(true_positive[c].item()),
        )
        for c in range(cm.shape[0])
    ]


def macro_f1(cm: torch.Tensor) -> float:
    reports = per_class_report(cm, tuple(str(i) for i in range(cm.shape[0])))
    return sum(r.f1 for r in reports) / len(reports)


@dataclass(frozen=True)
class ConfusedPair:
    true_class: int
    predicted_class: int
    count: int
    fraction_of_true: float  # count / images of the true class


def most_confused_pairs(cm: torch.Tensor, k: int = 5) -> list[ConfusedPair]:
    """The `k` largest off-diagonal cells, largest first (ties: lower true class, then predicted)."""
    n = cm.shape[0]
    off = cm.clone().long()
    off.fill_diagonal_(0)
    support = cm.sum(1)
    cells = [(int(off[t, p]), t, p) for t in range(n) for p in range(n) if t != p and off[t, p] > 0]
    cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
    return [ConfusedPair(t, p, count, count / int(support[t]) if support[t] > 0 else 0.0) for count, t, p in cells[:k]]


def reliability_bins(probabilities: torch.Tensor, y_true: torch.Tensor, bins: int = 15) -> list[dict]:
    """Per bin: lower/upper edge, count, mean confidence, accuracy (for a reliability diagram)."""
    confidence, predicted = probabilities.max(1)
    correct = (predicted == y_true).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    # Bins are (lower, upper]; a softmax confidence is > 0, so every sample falls in one.
    which = torch.bucketize(confidence.double(), edges[1:-1], right=False)
    rows = []
    for b in range(bins):
        in_bin = which == b
        count = int(in_bin.sum())
        rows.append(
            {
                "lower": edges[b].item(),
                "upper": edges[b + 1].item(),
                "count": count,
                "confidence": confidence[in_bin].double().mean().item() if count else None,
                "accuracy": correct[in_bin].mean().item() if count else None,
            }
        )
    return rows


def expected_calibration_error(probabilities: torch.Tensor, y_true: torch.Tensor, bins: int = 15) -> float:
    """ECE: sum over equal-width confidence bins of |accuracy - confidence| weighted by bin size."""
    total = len(y_true)
    return sum(
        row["count"] / total * abs(row["accuracy"] - row["confidence"])
        for row in reliability_bins(probabilities, y_true, bins)
        if row["count"]
    )
