"""Out-of-distribution scores and how well they separate: higher score = less like the training data.

Scores from a classifier's logits (maximum softmax probability, energy) and from its penultimate
features (Mahalanobis distance to the nearest class mean, cosine distance to the k-th nearest
training feature). Every score follows one convention, higher = more out-of-distribution, so a
threshold, AUROC and FPR@95 read the same for all of them.

AUROC treats the out-of-distribution images as positives; FPR@95 is the share of
out-of-distribution images still accepted at the threshold that keeps 95% of the
in-distribution ones (the in-distribution "true positive rate" of the OOD literature).
"""

from __future__ import annotations

import math

import numpy as np
import torch

# The share of in-distribution images a threshold keeps (FPR@95's 95%).
KEEP = 0.95
# Ridge added to the shared covariance, as a fraction of its mean variance: features after a ReLU
# have dimensions that are almost always 0, which make the plain covariance singular.
COVARIANCE_RIDGE = 1e-3
# Rows of queries scored at once against the fitted set (kNN, Mahalanobis): bounds the memory.
_CHUNK = 2048


def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))[:, 0]


def msp(logits: np.ndarray | torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """Minus the maximum softmax probability (Hendrycks & Gimpel, 2017)."""
    z = _numpy(logits).astype(np.float64) / temperature
    return -np.exp(z.max(axis=1) - _logsumexp(z))


def energy(logits: np.ndarray | torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """The free energy -T log sum exp(logits / T) (Liu et al., 2020): low for confident, familiar inputs."""
    z = _numpy(logits).astype(np.float64)
    return -temperature * _logsumexp(z / temperature)


class Mahalanobis:
    """Squared Mahalanobis distance to the nearest class mean, under one covariance shared by the
    classes (Lee et al., 2018), fitted on training features."""

    def __init__(self, features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor):
        x = _numpy(features).astype(np.float64).reshape(len(features), -1)
        y = _numpy(labels).astype(np.int64)
        classes = np.unique(y)
        self.means = np.stack([x[y == c].mean(axis=0) for c in classes])
        centred = x - self.means[np.searchsorted(classes, y)]
        covariance = centred.T @ centred / len(x)
        covariance += COVARIANCE_RIDGE * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
        # Distances under the covariance are Euclidean distances after whitening by its inverse
        # Cholesky factor: one matrix product per query instead of one per class.
        self.whiten = np.linalg.inv(np.linalg.cholesky(covariance)).T
        self.whitened_means = self.means @ self.whiten

    @classmethod
    def from_arrays(cls, means: np.ndarray, whiten: np.ndarray) -> Mahalanobis:
        """A fitted scorer from its saved class means (C, D) and whitening matrix (D, D): the
        precision (inverse covariance) is whiten @ whiten.T."""
        self = cls.__new__(cls)
        self.means, self.whiten = np.asarray(means, np.float64), np.asarray(whiten, np.float64)
        self.whitened_means = self.means @ self.whiten
        return self

    def score(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        x = _numpy(features).astype(np.float64).reshape(len(features), -1)
        out = np.empty(len(x))
        for start in range(0, len(x), _CHUNK):
            w = x[start : start + _CHUNK] @ self.whiten
            d = (w**2).sum(1)[:, None] - 2 * w @ self.whitened_means.T + (self.whitened_means**2).sum(1)[None]
            out[start : start + _CHUNK] = d.min(axis=1)
        return out


def _unit_rows(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(_numpy(x), dtype=torch.float32).reshape(len(x), -1)
    return t / t.norm(dim=1, keepdim=True).clamp(min=1e-12)


class KNN:
    """Cosine distance (1 - cosine similarity) to the k-th nearest training feature (Sun et al., 2022)."""

    def __init__(self, features: np.ndarray | torch.Tensor, k: int = 10):
        if not 1 <= k <= len(features):
            raise ValueError(f"k must be between 1 and the {len(features)} fitted features; got {k}")
        self.bank = _unit_rows(features)
        self.k = k

    def score(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        q = _unit_rows(features)
        out = []
        for start in range(0, len(q), _CHUNK):
            similarity = q[start : start + _CHUNK] @ self.bank.T
            out.append(1.0 - similarity.topk(self.k, dim=1).values[:, -1].double())
        return torch.cat(out).numpy() if out else np.empty(0)


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Probability that an out-of-distribution image scores above an in-distribution one (ties: half)."""
    from scipy.stats import rankdata

    a, b = np.asarray(in_scores, dtype=np.float64), np.asarray(out_scores, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("AUROC needs both in- and out-of-distribution scores")
    ranks = rankdata(np.concatenate([a, b]))  # average ranks: a tie counts one half
    return float((ranks[len(a) :].sum() - len(b) * (len(b) + 1) / 2) / (len(a) * len(b)))


def threshold(in_scores: np.ndarray, keep: float = KEEP) -> float:
    """The smallest score that keeps (score <= it) at least `keep` of the in-distribution images."""
    s = np.sort(np.asarray(in_scores, dtype=np.float64))
    if len(s) == 0 or not 0 < keep <= 1:
        raise ValueError(f"need in-distribution scores and 0 < keep <= 1; got {len(s)} scores, keep={keep}")
    return float(s[math.ceil(keep * len(s) - 1e-9) - 1])


def fpr_at(in_scores: np.ndarray, out_scores: np.ndarray, keep: float = KEEP) -> float:
    """FPR at `keep` TPR: the share of out-of-distribution images at or below the threshold that
    keeps `keep` of the in-distribution ones."""
    return float((np.asarray(out_scores) <= threshold(in_scores, keep)).mean())


class Standardised:
    """A score as z-units of its in-distribution spread, so scores of different scales can be summed."""

    def __init__(self, in_scores: np.ndarray):
        s = np.asarray(in_scores, dtype=np.float64)
        self.mean, self.std = float(s.mean()), float(s.std()) or 1.0

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return (np.asarray(scores, dtype=np.float64) - self.mean) / self.std
