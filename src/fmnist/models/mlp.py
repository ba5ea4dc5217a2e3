"""Multi-layer perceptrons: the baseline every Fashion-MNIST study starts from."""

from __future__ import annotations

from torch import nn

from fmnist.constants import NUM_CLASSES, NUM_PIXELS
from fmnist.models.base import Classifier
from fmnist.models.registry import register_model


def _mlp(hidden: tuple[int, ...], dropout: float, batch_norm: bool, num_classes: int) -> Classifier:
    if not hidden or any(h < 1 for h in hidden):
        raise ValueError("hidden sizes must be positive integers, at least one layer")
    if not 0.0 <= dropout < 1.0:
        raise ValueError("dropout must be in [0, 1)")
    layers: list[nn.Module] = [nn.Flatten()]  # (N,1,28,28) -> (N,784)
    width = NUM_PIXELS
    for size in hidden:
        layers.append(nn.Linear(width, size, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers.append(nn.ReLU(inplace=True))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    return Classifier(nn.Sequential(*layers), nn.Linear(width, num_classes), embedding_dim=width)


@register_model(family="mlp")
def mlp(
    hidden: tuple[int, ...] = (256, 128),
    dropout: float = 0.0,
    batch_norm: bool = False,
    num_classes: int = NUM_CLASSES,
) -> Classifier:
    """Configurable MLP: hidden sizes, dropout after each hidden layer, optional batch norm."""
    return _mlp(tuple(hidden), dropout, batch_norm, num_classes)


@register_model(family="mlp")
def mlp_seed002(num_classes: int = NUM_CLASSES) -> Classifier:
    """Seed 002's baseline: 784 -> 128 -> 10, ReLU."""
    return _mlp((128,), 0.0, False, num_classes)


# fmnist 0.2.0's mlp_wide (784-1024-512, dropout 0.2) took no arguments and saved none.
@register_model(family="mlp", legacy_args={"hidden": (1024, 512), "dropout": 0.2})
def mlp_wide(hidden: tuple[int, ...] = (512, 256), dropout: float = 0.0, num_classes: int = NUM_CLASSES) -> Classifier:
    """fmnist's MLP baseline: 784 -> 512 -> 256 -> 10 with batch norm (fmnist 0.3-0.4: 768-384, recorded by their runs)."""
    return _mlp(tuple(hidden), dropout, True, num_classes)
