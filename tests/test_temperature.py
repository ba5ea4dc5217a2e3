"""Temperature scaling against synthetic logits whose true temperature is known, and a grid search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmnist.analysis.metrics import cross_entropy
from fmnist.analysis.temperature import T_MAX, T_MIN, fit_temperature, nll, scale


def _synthetic(t0: float, n: int = 20_000, classes: int = 10, seed: int = 0):
    """Logits that are calibrated once divided by t0: labels are drawn from softmax(true logits)."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0.0, 2.5, size=(n, classes))
    p = np.exp(true_logits - true_logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = (p.cumsum(1) < rng.random((n, 1))).sum(1).clip(max=classes - 1)
    return true_logits * t0, labels


@pytest.mark.parametrize("t0", [0.4, 1.0, 2.5])
def test_fit_recovers_the_temperature_that_made_the_logits(t0):
    logits, labels = _synthetic(t0)
    fit = fit_temperature(logits, labels)
    # 20,000 labels pin T down to about 2% (its standard error here is under 1%).
    assert fit.temperature == pytest.approx(t0, rel=0.03)
    assert fit.nll_after <= fit.nll_before + 1e-12
    if t0 != 1.0:
        assert fit.ece_after < fit.ece_before


def test_fit_matches_a_brute_force_grid_search():
    logits, labels = _synthetic(1.7, n=5_000, seed=1)
    grid = np.exp(np.linspace(np.log(T_MIN), np.log(T_MAX), 2001))
    losses = np.array([nll(logits, labels, t) for t in grid])
    best = grid[losses.argmin()]
    fit = fit_temperature(torch.from_numpy(logits).float(), torch.from_numpy(labels))
    assert fit.nll_after <= losses.min() + 1e-6
    # Neighbouring grid points are 0.3% apart.
    assert fit.temperature == pytest.approx(best, rel=0.004)


def test_nll_is_torch_cross_entropy_and_scale_is_a_softmax():
    logits, labels = _synthetic(2.0, n=500, seed=2)
    t = torch.from_numpy(logits)
    assert nll(logits, labels, 2.0) == pytest.approx(cross_entropy(t / 2.0, torch.from_numpy(labels)), rel=1e-5)
    np.testing.assert_allclose(scale(logits, 2.0), torch.softmax(t / 2.0, 1).numpy(), rtol=1e-9)


def test_a_net_beyond_the_bracket_stops_at_its_edge():
    logits, labels = _synthetic(1.0, n=2_000, seed=3)
    # Random labels: the NLL keeps falling as T grows, towards the uniform distribution.
    fit = fit_temperature(logits, np.random.default_rng(0).integers(0, 10, len(labels)))
    assert fit.temperature == pytest.approx(T_MAX, rel=1e-6)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="logits"):
        fit_temperature(np.zeros((3, 10)), np.zeros(4, dtype=int))
