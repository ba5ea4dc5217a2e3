"""Split-conformal sets: the quantile against a sorted-array oracle, coverage against its guarantee."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fmnist.analysis.conformal import calibrate, class_scores, conformal_quantile, summary


def _exchangeable(n: int, seed: int, classes: int = 10):
    """Over-confident probabilities with labels drawn from a flatter softmax: miscalibrated but exchangeable."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (n, classes))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    truth = np.exp(0.6 * logits) / np.exp(0.6 * logits).sum(1, keepdims=True)
    labels = (truth.cumsum(1) < rng.random((n, 1))).sum(1).clip(max=classes - 1)
    return p, labels


def _oracle_quantile(scores, coverage):
    """The smallest score with at least ceil((n + 1) * coverage) scores at or below it, by counting."""
    need = math.ceil((len(scores) + 1) * coverage - 1e-9)
    for s in sorted(scores):
        if sum(x <= s for x in scores) >= need:
            return s
    return math.inf


@pytest.mark.parametrize("n", [1, 5, 19, 20, 99, 100, 333])
@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_quantile_matches_the_counting_oracle(n, coverage):
    scores = np.round(np.random.default_rng(n).random(n), 1)  # ties on purpose
    assert conformal_quantile(scores, coverage) == _oracle_quantile(list(scores), coverage)


def test_too_few_calibration_images_put_every_class_in_the_set():
    conformal = calibrate(np.full((5, 10), 0.1), np.arange(5), 0.95)
    assert conformal.quantile == math.inf
    assert conformal.sets(np.eye(10)[:3]).all()


@pytest.mark.parametrize("method", ["lac", "aps"])
@pytest.mark.parametrize("alpha", [0.2, 0.1, 0.05])
def test_held_out_coverage_is_within_the_guarantee(method, alpha):
    p, y = _exchangeable(25_000, seed=int(alpha * 100))
    n_cal = 5_000
    conformal = calibrate(p[:n_cal], y[:n_cal], 1 - alpha, method)
    result = summary(conformal.sets(p[n_cal:]), y[n_cal:])
    # Coverage given the calibration draw is Beta-distributed about 1 - alpha (sd sqrt(alpha(1-alpha)/n));
    # the 20,000 test images add their own binomial noise. Four standard deviations each way, and the
    # guarantee's own 1/(n+1) slack above.
    sd = math.sqrt(alpha * (1 - alpha) * (1 / n_cal + 1 / 20_000))
    assert 1 - alpha - 4 * sd <= result["coverage"] <= 1 - alpha + 1 / (n_cal + 1) + 4 * sd
    assert result["mean_set_size"] >= 1
    sizes = conformal.sets(p[n_cal:]).sum(1)
    assert sizes.min() >= 1
    # Without the top class forced in, coverage is the guarantee's alone (and never above the forced one's).
    exact = summary(conformal.sets(p[n_cal:], allow_empty=True), y[n_cal:])
    assert 1 - alpha - 4 * sd <= exact["coverage"] <= min(result["coverage"], 1 - alpha + 1 / (n_cal + 1) + 4 * sd)


def test_mean_coverage_over_many_splits_is_the_exact_finite_sample_value():
    # With n calibration scores and no ties, P(a new score <= the k-th smallest) is exactly k / (n + 1).
    # A quantile off by one index (ceil(n * coverage), the naive one) misses this by 1/101.
    p, y = _exchangeable(60_000, seed=7)
    scores = class_scores(p, "lac")[np.arange(len(y)), y]
    n, trials = 100, 600
    k = math.ceil((n + 1) * 0.9)
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(trials):
        pick = rng.permutation(len(y))[: n + 200]
        q = conformal_quantile(scores[pick[:n]], 0.9)
        hits.append((scores[pick[n:]] <= q).mean())
    # Each trial's coverage has sd about sqrt(0.09 / n) = 0.03; over 600 trials the mean's is 0.0012.
    assert np.mean(hits) == pytest.approx(k / (n + 1), abs=0.004)


def test_sets_follow_the_scores_and_always_hold_the_top_class():
    p = np.array([[0.5, 0.3, 0.2], [0.34, 0.33, 0.33], [0.9, 0.05, 0.05]])
    lac = calibrate(p, [1, 1, 0], 0.5, "lac")  # true scores 0.7, 0.67, 0.1 -> quantile = the 2nd, 0.67
    assert lac.quantile == pytest.approx(0.67)
    np.testing.assert_array_equal(lac.sets(p), [[1, 0, 0], [1, 1, 1], [1, 0, 0]])
    # APS: cumulative mass at or above each class in rank order.
    np.testing.assert_allclose(class_scores(p, "aps")[0], [0.5, 0.8, 1.0])
    # A quantile below every score still leaves the most probable class in.
    sets = calibrate(p, [0, 0, 0], 0.3, "lac").sets(torch.tensor([[0.2, 0.7, 0.1]]))
    np.testing.assert_array_equal(sets, [[0, 1, 0]])


def test_summary_per_class_against_counting():
    p, y = _exchangeable(3_000, seed=3)
    sets = calibrate(p, y, 0.9).sets(p)
    result = summary(sets, y)
    for row in result["per_class"]:
        mine = y == row["class"]
        assert row["count"] == mine.sum()
        assert row["coverage"] == pytest.approx(np.mean([sets[i, y[i]] for i in np.flatnonzero(mine)]))
        assert row["mean_set_size"] == pytest.approx(sets[mine].sum() / mine.sum())
    with pytest.raises(ValueError, match="coverage"):
        calibrate(p, y, 1.0)
