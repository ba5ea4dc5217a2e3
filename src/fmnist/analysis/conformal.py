"""Split-conformal prediction sets: a set of classes that holds the true one with a chosen probability.

Calibrated on held-out (validation) probabilities; for a new image exchangeable with them, the set
holds the true class with probability at least the target coverage 1 - alpha (Vovk et al., 2005;
Angelopoulos & Bates, 2021), and, with n calibration images and no ties, at most
1 - alpha + 1 / (n + 1).

Scores (higher = the label fits worse):
- "lac": 1 - p(true class) (Sadinle et al., 2019): the smallest sets on average;
- "aps": the probability mass of the classes ranked at or above the true one (Romano et al., 2020),
  without the randomisation, so a set is a deterministic function of the probabilities.

A set is never empty by default: the top class is always in it, which can only raise coverage, and
so a target below the top-1 accuracy is overshot (`sets(..., allow_empty=True)` keeps the exact sets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

METHODS = ("lac", "aps")


def _probabilities(p: np.ndarray | torch.Tensor) -> np.ndarray:
    x = p.detach().cpu().numpy() if isinstance(p, torch.Tensor) else np.asarray(p)
    if x.ndim != 2:
        raise ValueError(f"expected (N, C) probabilities, got shape {list(x.shape)}")
    return x.astype(np.float64, copy=False)


def _labels(y: np.ndarray | torch.Tensor) -> np.ndarray:
    return (y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)).astype(np.int64)


def _cumulative_mass(p: np.ndarray) -> np.ndarray:
    """(N, C): for each class, the mass of the classes ranked at or above it (ties by index)."""
    order = np.argsort(-p, axis=1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=1).cumsum(axis=1)
    out = np.empty_like(p)
    np.put_along_axis(out, order, ranked, axis=1)
    return out


def class_scores(probabilities: np.ndarray | torch.Tensor, method: str = "lac") -> np.ndarray:
    """(N, C) non-conformity score of every class for every image."""
    p = _probabilities(probabilities)
    if method == "lac":
        return 1.0 - p
    if method == "aps":
        return _cumulative_mass(p)
    raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The ceil((n + 1) * coverage)-th smallest of n scores; +inf when n is too small for the target
    (every class then goes in the set)."""
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be between 0 and 1 (exclusive); got {coverage}")
    s = np.sort(np.asarray(scores, dtype=np.float64))
    # The tolerance keeps a product that is an integer in exact arithmetic from being rounded up past
    # it when floats land a hair above it.
    k = math.ceil((len(s) + 1) * coverage - 1e-9)
    return float(s[k - 1]) if k <= len(s) else math.inf


@dataclass(frozen=True)
class Conformal:
    """A calibrated set predictor: `sets(p)` holds the true class with probability >= `coverage`."""

    coverage: float
    method: str
    quantile: float
    calibration_size: int

    def sets(self, probabilities: np.ndarray | torch.Tensor, allow_empty: bool = False) -> np.ndarray:
        """(N, C) boolean membership. Each row holds at least its most probable class unless
        `allow_empty`: a never-empty set covers at least the top-1 accuracy, so a target below that
        accuracy is only met (to within the guarantee's slack) with empty sets allowed."""
        p = _probabilities(probabilities)
        members = class_scores(p, self.method) <= self.quantile
        if not allow_empty:
            members[np.arange(len(p)), p.argmax(axis=1)] = True
        return members

    def to_dict(self) -> dict:
        return {"coverage": self.coverage, "method": self.method, "quantile": self.quantile,
                "calibration_size": self.calibration_size}  # fmt: skip


def calibrate(probabilities: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, coverage: float,
              method: str = "lac") -> Conformal:  # fmt: skip
    """Fit the set predictor on calibration (validation) probabilities and their true labels."""
    p, y = _probabilities(probabilities), _labels(labels)
    if len(p) != len(y) or len(y) == 0:
        raise ValueError(f"need N > 0 probability rows and N labels; got {len(p)} and {len(y)}")
    true_scores = class_scores(p, method)[np.arange(len(y)), y]
    return Conformal(coverage, method, conformal_quantile(true_scores, coverage), len(y))


def summary(sets: np.ndarray, labels: np.ndarray | torch.Tensor, num_classes: int | None = None) -> dict:
    """Empirical coverage and mean set size, overall and per true class."""
    y = _labels(labels)
    sets = np.asarray(sets, dtype=bool)
    covered = sets[np.arange(len(y)), y]
    size = sets.sum(axis=1)
    per_class = []
    for c in range(num_classes or sets.shape[1]):
        mine = y == c
        n = int(mine.sum())
        per_class.append({"class": c, "count": n,
                          "coverage": float(covered[mine].mean()) if n else None,
                          "mean_set_size": float(size[mine].mean()) if n else None})  # fmt: skip
    return {
        "coverage": float(covered.mean()),
        "mean_set_size": float(size.mean()),
        "singletons": float((size == 1).mean()),
        "empty": float((size == 0).mean()),
        "per_class": per_class,
    }
