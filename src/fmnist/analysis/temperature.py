"""Temperature scaling: one positive number T that divides the logits so their softmax is calibrated.

T is fitted on validation logits by minimising the negative log-likelihood (Guo et al., 2017).
The NLL of softmax(z / T) is convex in 1/T, hence unimodal in log T, so a golden-section search on
log T over a fixed bracket finds the minimum without gradients, step sizes or a random start:
the same logits always give the same T.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from fmnist.analysis.calibration import DEFAULT_BINS
from fmnist.analysis.metrics import expected_calibration_error

# The bracket of the search. A net that needs T outside it is broken rather than miscalibrated;
# the fit then stops at the edge it reached.
T_MIN, T_MAX = 0.05, 20.0
# Golden-section steps: each shrinks the bracket of log T by 0.618, so 80 of them reach float
# precision (log(400) * 0.618**80 < 1e-16).
_STEPS = 80


@dataclass(frozen=True)
class TemperatureFit:
    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _as_float64(logits: np.ndarray | torch.Tensor) -> np.ndarray:
    x = logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    return x.astype(np.float64, copy=False)


def _labels(labels: np.ndarray | torch.Tensor) -> np.ndarray:
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return y.astype(np.int64, copy=False)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true class under softmax(logits / temperature)."""
    z, y = _as_float64(logits), _labels(labels)
    return float(-log_softmax(z / temperature)[np.arange(len(y)), y].mean())


def scale(logits: np.ndarray | torch.Tensor, temperature: float) -> np.ndarray:
    """Calibrated probabilities: softmax(logits / temperature), float64."""
    return np.exp(log_softmax(_as_float64(logits) / temperature))


def _ece(logits: np.ndarray, labels: np.ndarray, temperature: float, bins: int) -> float:
    probabilities = torch.from_numpy(scale(logits, temperature))
    return expected_calibration_error(probabilities, torch.from_numpy(labels), bins)


def fit_temperature(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                    bins: int = DEFAULT_BINS) -> TemperatureFit:  # fmt: skip
    """The T in [T_MIN, T_MAX] that minimises the NLL of (N, C) `logits` for `labels`, with the
    NLL and ECE (`bins` equal-width bins, as the report's) before (T = 1) and after."""
    z, y = _as_float64(logits), _labels(labels)
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise ValueError(f"need (N, C) logits and N labels with N > 0; got {list(z.shape)} and {len(y)}")
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(z, y, math.exp(a)), nll(z, y, math.exp(b))
    for _ in range(_STEPS):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(z, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(z, y, math.exp(b))
    temperature = math.exp((lo + hi) / 2)
    before, after = nll(z, y, 1.0), nll(z, y, temperature)
    if before < after:  # T = 1 lies in the bracket, so this means a flat NLL: keep the logits as they are
        temperature, after = 1.0, before
    return TemperatureFit(
        temperature=temperature,
        nll_before=before,
        nll_after=after,
        ece_before=_ece(z, y, 1.0, bins),
        ece_after=_ece(z, y, temperature, bins),
    )
