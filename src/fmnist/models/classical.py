"""scikit-learn baselines as registered model names, so configs, `fmnist compare` and reports
treat them like the networks (trained by fmnist.classical, never by gradient descent).

The registry needs an nn.Module per name. For the linear models (logistic regression, linear
SVC) that module is the model itself: flatten -> Linear(784, 10), into which the fitted
coefficients are copied, so their run directories hold an ordinary safetensors checkpoint.
A random forest or RBF SVC has no such form; it gets the same stand-in, never trained, and
its run directory has results but no checkpoint.
"""

from __future__ import annotations

from torch import nn

from fmnist.constants import NUM_CLASSES, NUM_PIXELS
from fmnist.models.base import Classifier
from fmnist.models.registry import register_model

CLASSICAL_MODELS = ("logreg", "linear_svc", "rbf_svc", "random_forest")
LINEAR_MODELS = ("logreg", "linear_svc")


def linear_readout(num_classes: int = NUM_CLASSES) -> Classifier:
    """Pixels straight into a linear layer: the embedding is the (normalised) image itself."""
    return Classifier(nn.Flatten(), nn.Linear(NUM_PIXELS, num_classes), NUM_PIXELS)


def _check(train_size: int, **positive: float) -> None:
    if train_size < 0:
        raise ValueError("train_size must be 0 (all training images) or a positive number of images")
    for name, value in positive.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive")


@register_model(family="classical")
def logreg(C: float = 1.0, max_iter: int = 200, train_size: int = 0, num_classes: int = NUM_CLASSES) -> Classifier:
    """Logistic regression (scikit-learn, multinomial, lbfgs) on the pixels."""
    _check(train_size, C=C, max_iter=max_iter)
    return linear_readout(num_classes)


@register_model(family="classical")
def linear_svc(
    C: float = 0.1, max_iter: int = 2000, train_size: int = 20000, num_classes: int = NUM_CLASSES
) -> Classifier:
    """Linear support vector classifier (scikit-learn LinearSVC, one-vs-rest) on the pixels."""
    _check(train_size, C=C, max_iter=max_iter)
    return linear_readout(num_classes)


@register_model(family="classical")
def rbf_svc(
    C: float = 10.0, gamma: str = "scale", train_size: int = 10000, num_classes: int = NUM_CLASSES
) -> Classifier:
    """RBF-kernel SVC (scikit-learn); results only, no checkpoint (the torch module is a stand-in)."""
    _check(train_size, C=C)
    if gamma not in ("scale", "auto"):
        try:
            if not float(gamma) > 0:
                raise ValueError
        except ValueError:
            raise ValueError("gamma must be 'scale', 'auto' or a positive number") from None
    return linear_readout(num_classes)


@register_model(family="classical")
def random_forest(
    n_estimators: int = 100, max_depth: int = 0, train_size: int = 0, num_classes: int = NUM_CLASSES
) -> Classifier:
    """Random forest (scikit-learn); results only, no checkpoint (the torch module is a stand-in)."""
    _check(train_size, n_estimators=n_estimators)
    if max_depth < 0:
        raise ValueError("max_depth must be 0 (unlimited) or positive")
    return linear_readout(num_classes)
