"""Metric functions against scikit-learn and hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from fmnist.analysis import metrics


@pytest.fixture
def predictions():
    gen = torch.Generator().manual_seed(0)
    y_true = torch.randint(0, 10, (500,), generator=gen)
    noise = torch.randint(0, 10, (500,), generator=gen)
    y_pred = torch.where(torch.rand(500, generator=gen) < 0.7, y_true, noise)
    logits = torch.randn(500, 10, generator=gen) + 3 * torch.nn.functional.one_hot(y_pred, 10)
    return y_true, y_pred, logits


def test_confusion_matrix_matches_sklearn(predictions):
    y_true, y_pred, _ = predictions
    ours = metrics.confusion_matrix(y_true, y_pred).numpy()
    np.testing.assert_array_equal(ours, skm.confusion_matrix(y_true, y_pred, labels=range(10)))


def test_per_class_precision_recall_f1_match_sklearn(predictions):
    y_true, y_pred, _ = predictions
    report = metrics.per_class_report(metrics.confusion_matrix(y_true, y_pred))
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=range(10), zero_division=0)
    np.testing.assert_allclose([c.precision for c in report], p)
    np.testing.assert_allclose([c.recall for c in report], r)
    np.testing.assert_allclose([c.f1 for c in report], f)
    assert [c.support for c in report] == s.tolist()
    assert metrics.macro_f1(metrics.confusion_matrix(y_true, y_pred)) == pytest.approx(
        skm.f1_score(y_true, y_pred, average="macro", zero_division=0)
    )


def test_accuracy_and_cross_entropy_match_sklearn(predictions):
    y_true, y_pred, logits = predictions
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))
    probs = torch.softmax(logits.double(), 1).numpy()
    assert metrics.cross_entropy(logits, y_true) == pytest.approx(
        skm.log_loss(y_true, probs, labels=range(10)), rel=1e-5
    )


def test_class_never_predicted_has_zero_precision_not_nan():
    y_true = torch.tensor([0, 0, 1, 1])
    y_pred = torch.tensor([0, 0, 0, 0])
    report = metrics.per_class_report(metrics.confusion_matrix(y_true, y_pred, 2), ("a", "b"))
    assert report[1].precision == 0 and report[1].recall == 0 and report[1].f1 == 0
    assert report[0].precision == 0.5 and report[0].recall == 1.0 and report[0].errors == 0
    assert report[1].errors == 2


def test_most_confused_pairs_hand_example():
    cm = torch.tensor([[50, 3, 7], [0, 40, 10], [7, 1, 30]])
    pairs = metrics.most_confused_pairs(cm, k=3)
    assert [(p.true_class, p.predicted_class, p.count) for p in pairs] == [(1, 2, 10), (0, 2, 7), (2, 0, 7)]
    assert pairs[0].fraction_of_true == pytest.approx(10 / 50)
    assert pairs[1].fraction_of_true == pytest.approx(7 / 60)


def test_expected_calibration_error_hand_example():
    # Two bins used: conf 0.9 (2 samples, 1 right) and conf 0.6 (2 samples, 2 right).
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = torch.tensor([0, 1, 0, 1])
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    assert metrics.expected_calibration_error(probs, y, bins=10) == pytest.approx(expected)
    bins = metrics.reliability_bins(probs, y, bins=10)
    assert sum(b["count"] for b in bins) == 4
    assert [b["count"] for b in bins if b["count"]] == [2, 2]


def test_perfectly_calibrated_predictions_have_zero_ece():
    probs = torch.tensor([[1.0, 0.0]] * 5)
    assert metrics.expected_calibration_error(probs, torch.zeros(5, dtype=torch.long)) == pytest.approx(0.0)
