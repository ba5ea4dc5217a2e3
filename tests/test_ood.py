"""OOD scores and metrics against scikit-learn, brute force and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fmnist.analysis.ood import KNN, Mahalanobis, Standardised, auroc, energy, fpr_at, msp, threshold


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    # Rounded scores make many ties, where a rank-based AUROC most easily goes wrong.
    a = np.round(rng.normal(0, 1, 700), 1)
    b = np.round(rng.normal(0.8, 1.2, 300), 1)
    expected = roc_auc_score(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b])
    assert auroc(a, b) == pytest.approx(expected, abs=1e-12)


def _brute_force_fpr(in_scores, out_scores, keep):
    """The lowest candidate threshold whose in-distribution acceptance reaches `keep`, and its FPR."""
    for t in np.sort(np.unique(np.r_[in_scores, out_scores])):
        if (in_scores <= t).mean() >= keep:
            return t, (out_scores <= t).mean()
    raise AssertionError("unreachable")


@pytest.mark.parametrize(("seed", "n", "keep"), [(0, 1000, 0.95), (1, 999, 0.95), (2, 37, 0.9), (3, 500, 0.8)])
def test_threshold_and_fpr_match_brute_force(seed, n, keep):
    rng = np.random.default_rng(seed)
    a = np.round(rng.normal(0, 1, n), 2)
    b = np.round(rng.normal(1.5, 1, 400), 2)
    t, fpr = _brute_force_fpr(a, b, keep)
    assert threshold(a, keep) == t
    assert fpr_at(a, b, keep) == pytest.approx(fpr, abs=1e-12)
    assert (a <= threshold(a, keep)).mean() >= keep


def test_msp_and_energy_against_torch():
    logits = torch.randn(50, 10, generator=torch.Generator().manual_seed(0)) * 4
    np.testing.assert_allclose(msp(logits), -torch.softmax(logits.double(), 1).max(1).values.numpy(), rtol=1e-12)
    np.testing.assert_allclose(energy(logits, 2.0), -2.0 * torch.logsumexp(logits.double() / 2.0, 1).numpy(),
                               rtol=1e-12)  # fmt: skip
    # Confident logits (one large entry) are less out-of-distribution than flat ones, for both scores.
    sure, flat = torch.tensor([[12.0] + [0.0] * 9]), torch.zeros(1, 10)
    assert msp(sure)[0] < msp(flat)[0]
    assert energy(sure)[0] < energy(flat)[0]


def test_mahalanobis_against_a_direct_computation():
    rng = np.random.default_rng(0)
    d, classes = 6, 3
    means = rng.normal(0, 5, (classes, d))
    labels = rng.integers(0, classes, 3000)
    mixing = rng.normal(0, 1, (d, d))
    features = means[labels] + rng.normal(0, 1, (3000, d)) @ mixing
    fitted = Mahalanobis(features, labels)
    centred = features - np.stack([features[labels == c].mean(0) for c in range(classes)])[labels]
    cov = centred.T @ centred / len(features)
    cov += 1e-3 * np.trace(cov) / d * np.eye(d)
    precision = np.linalg.inv(cov)
    queries = rng.normal(0, 6, (40, d))
    expected = np.array([min((q - m) @ precision @ (q - m) for m in fitted.means) for q in queries])
    np.testing.assert_allclose(fitted.score(queries), expected, rtol=1e-8)
    # Far from every class mean scores higher than the training data itself.
    assert np.median(fitted.score(features)) < np.median(fitted.score(features + 30))


def test_knn_against_brute_force():
    rng = np.random.default_rng(1)
    bank = rng.normal(0, 1, (300, 8))
    queries = rng.normal(0, 1, (25, 8))
    k = 7
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    similarity = unit(queries) @ unit(bank).T
    expected = 1 - np.sort(similarity, axis=1)[:, -k]
    np.testing.assert_allclose(KNN(bank, k=k).score(queries), expected, atol=1e-6)
    # A training point's own nearest neighbour is itself.
    assert np.allclose(KNN(bank, k=1).score(bank[:10]), 0, atol=1e-6)
    with pytest.raises(ValueError, match="k must be"):
        KNN(bank, k=301)


def test_standardised_scores_have_zero_mean_unit_spread_in_distribution():
    s = np.random.default_rng(2).normal(5, 3, 1000)
    z = Standardised(s)(s)
    assert abs(z.mean()) < 1e-12 and z.std() == pytest.approx(1.0)
