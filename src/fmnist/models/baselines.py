"""scikit-learn baselines, registered by name beside the networks (fitted by fmnist.training.baselines).

Each is an estimator factory whose signature is the model's arguments; `train_size` is read
by the fitting code (how many training images to fit on; 0 = all), not by the estimator.
The Fashion-MNIST paper's benchmark puts logistic regression near 84% and an RBF SVC near 90%.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fmnist.constants import NUM_CLASSES, NUM_PIXELS
from fmnist.models.base import Classifier
from fmnist.models.registry import register_baseline

# The Fashion-MNIST paper's benchmark (Xiao et al. 2017) for the baselines it names, best settings.
PAPER_BENCHMARK = {"logreg": 0.842, "rbf_svc": 0.897}


def linear_readout(num_classes: int = NUM_CLASSES) -> Classifier:
    """Pixels straight into a linear layer: the embedding is the (normalised) image itself."""
    return Classifier(nn.Flatten(), nn.Linear(NUM_PIXELS, num_classes), NUM_PIXELS)


def _check(train_size: int, **positive: float) -> None:
    if train_size < 0:
        raise ValueError("train_size must be 0 (all training images) or a positive number of images")
    for name, value in positive.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive")


@register_baseline(linear=True, probabilistic=True, iterative=True, network=linear_readout)
def logreg(C: float = 1.0, max_iter: int = 200, train_size: int = 0, seed: int = 0) -> Any:
    """Logistic regression (scikit-learn, multinomial, lbfgs) on the pixels."""
    _check(train_size, C=C, max_iter=max_iter)
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=max_iter, random_state=seed)


@register_baseline(linear=True, probabilistic=False, iterative=True, network=linear_readout)
def linear_svc(C: float = 0.1, max_iter: int = 2000, train_size: int = 20000, seed: int = 0) -> Any:
    """Linear support vector classifier (scikit-learn LinearSVC, one-vs-rest) on the pixels."""
    _check(train_size, C=C, max_iter=max_iter)
    from sklearn.svm import LinearSVC

    return LinearSVC(C=C, max_iter=max_iter, dual="auto", random_state=seed)


@register_baseline(linear=False, probabilistic=False, iterative=True)
def rbf_svc(C: float = 10.0, gamma: str = "scale", train_size: int = 10000, seed: int = 0) -> Any:
    """RBF-kernel SVC (scikit-learn); results only, no checkpoint."""
    _check(train_size, C=C)
    if gamma not in ("scale", "auto"):
        try:
            if not float(gamma) > 0:
                raise ValueError
        except ValueError:
            raise ValueError("gamma must be 'scale', 'auto' or a positive number") from None
    from sklearn.svm import SVC

    value = gamma if gamma in ("scale", "auto") else float(gamma)
    return SVC(C=C, kernel="rbf", gamma=value, decision_function_shape="ovr", random_state=seed)


@register_baseline(linear=False, probabilistic=True, iterative=False)
def random_forest(n_estimators: int = 100, max_depth: int = 0, train_size: int = 0, seed: int = 0) -> Any:
    """Random forest (scikit-learn); results only, no checkpoint."""
    _check(train_size, n_estimators=n_estimators)
    if max_depth < 0:
        raise ValueError("max_depth must be 0 (unlimited) or positive")
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=n_estimators, max_depth=max_depth or None,
                                  n_jobs=max(1, torch.get_num_threads()), random_state=seed)  # fmt: skip
