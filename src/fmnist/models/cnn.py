"""Convolutional networks: the seeds' CNNs by name, a configurable CNN, LeNet-5 and fmnist's default."""

from __future__ import annotations

from torch import nn

from fmnist.constants import IMAGE_SIZE, NUM_CLASSES
from fmnist.models.base import Classifier
from fmnist.models.registry import register_model
from fmnist.models.whitening import PatchWhitening


def conv_block(c_in: int, c_out: int, batch_norm: bool) -> list[nn.Module]:
    """3x3 same-padding convolution (+ BatchNorm) + ReLU; keeps the spatial size."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return layers


def _fc_stack(width: int, fc: tuple[int, ...], dropout: float) -> tuple[list[nn.Module], int]:
    layers: list[nn.Module] = []
    for size in fc:
        layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    return layers, width


@register_model(family="cnn")
def cnn(
    channels: tuple[int, ...] = (32, 64),
    convs_per_stage: int = 1,
    batch_norm: bool = False,
    dropout: float = 0.0,
    fc: tuple[int, ...] = (128,),
    fc_dropout: float = 0.0,
    num_classes: int = NUM_CLASSES,
) -> Classifier:
    """Configurable CNN: per stage `convs_per_stage` 3x3 convs then 2x2 max-pool; then FC layers."""
    channels, fc = tuple(channels), tuple(fc)
    if not channels or any(c < 1 for c in channels) or any(f < 1 for f in fc):
        raise ValueError("channels and fc sizes must be positive integers, at least one stage")
    if len(channels) > 4:
        raise ValueError("at most 4 pooling stages fit a 28x28 image")
    if convs_per_stage < 1:
        raise ValueError("convs_per_stage must be at least 1")
    layers: list[nn.Module] = []
    c_in, size = 1, IMAGE_SIZE
    for c_out in channels:
        for _ in range(convs_per_stage):
            layers += conv_block(c_in, c_out, batch_norm)
            c_in = c_out
        layers.append(nn.MaxPool2d(2))  # size -> floor(size / 2)
        size //= 2
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    fc_layers, width = _fc_stack(c_in * size * size, fc, fc_dropout)
    features = nn.Sequential(*layers, nn.Flatten(), *fc_layers)
    return Classifier(features, nn.Linear(width, num_classes), width, channels_last=True)


@register_model(family="cnn")
def cnn_seed002(num_classes: int = NUM_CLASSES) -> Classifier:
    """Seed 002's CNN: 2 x (conv 3x3 + ReLU + max-pool), FC 3136 -> 128 + dropout 0.3."""
    features = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # (N,32,14,14)
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # (N,64,7,7)
        nn.Flatten(),  # (N,3136)
        nn.Linear(64 * 7 * 7, 128), nn.ReLU(inplace=True), nn.Dropout(0.3),
    )  # fmt: skip
    return Classifier(features, nn.Linear(128, num_classes), 128, channels_last=True)


@register_model(family="cnn")
def cnn_seed004(
    second_conv: bool = True,
    conv_dropout: float = 0.25,
    fc: int = 128,
    fc_dropout: float = 0.5,
    num_classes: int = NUM_CLASSES,
) -> Classifier:
    """Seed 004's CNN: conv 1->32, conv 32->64, one max-pool, FC 12544 -> 128 (1,625,866 params).

    The write-up's layer list adds up to 1,625,866 parameters; its headline figure of
    1,663,946 cannot be reached by any reading of those layers, so the layers win. The
    arguments express the write-up's ablation (no dropout, single conv, smaller FC).
    """
    c_out = 64 if second_conv else 32
    layers: list[nn.Module] = [nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(inplace=True)]  # (N,32,28,28)
    if second_conv:
        layers += [nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True)]  # (N,64,28,28)
    layers.append(nn.MaxPool2d(2))  # (N,c_out,14,14)
    if conv_dropout > 0:
        layers.append(nn.Dropout(conv_dropout))
    layers += [nn.Flatten(), nn.Linear(c_out * 14 * 14, fc), nn.ReLU(inplace=True)]  # (N,fc)
    if fc_dropout > 0:
        layers.append(nn.Dropout(fc_dropout))
    return Classifier(nn.Sequential(*layers), nn.Linear(fc, num_classes), fc, channels_last=True)


@register_model(family="cnn")
def lenet5(num_classes: int = NUM_CLASSES) -> Classifier:
    """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, 28x28 input padded to 32x32."""
    features = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # (N,6,14,14)
        nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # (N,16,5,5)
        nn.Flatten(),  # (N,400)
        nn.Linear(400, 120), nn.ReLU(inplace=True),
        nn.Linear(120, 84), nn.ReLU(inplace=True),
    )  # fmt: skip
    return Classifier(features, nn.Linear(84, num_classes), 84, channels_last=True)


def conv_pool_block(c_in: int, c_out: int) -> list[nn.Module]:
    """3x3 conv, then 2x2 max-pool, then BatchNorm + ReLU: normalising after pooling touches
    4x fewer values, which on a CPU is most of a small net's time (as airbench orders it)."""
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


# Checkpoints record every argument they were built with, save those older than the argument:
# fmnist 0.2.0's fastcnn ran its last conv at 7x7 (no `pool_before_last_conv`), and every fastcnn
# before fmnist 0.5 learned its first conv (no `whiten`). Widths were always recorded.
@register_model(family="cnn", legacy_args={"pool_before_last_conv": False, "whiten": False})
def fastcnn(
    widths: tuple[int, ...] = (16, 32, 64),
    pool_before_last_conv: bool = True,
    whiten: bool = True,
    num_classes: int = NUM_CLASSES,
) -> Classifier:
    """fmnist's default, the net `fmnist train` trains: 16-32-64, a patch-whitening first conv, pooled early.

    The 28x28 stage is pure memory traffic on a CPU, so it gets only 16 channels; normalising
    after pooling touches 4x fewer values; the last conv runs on the pooled 3x3 map (5.4x
    fewer MACs than at 7x7). The README's "Performance" section measures each step.
    `whiten`: the first conv is a frozen PatchWhitening, set from the training images before the
    first step (fmnist.models.whitening.fit_to_data; the trainer does it, a checkpoint carries it).
    The defaults are the `fast` recipe's net (fmnist.training.recipes); fmnist 0.3's was
    `widths=16,48,96 whiten=false`.
    """
    c1, c2, c3 = tuple(widths)
    # Layers draw their initial weights in the order they are built. The 3x3 last conv is
    # built first because the default's measured seeds (README) came from that order; the 7x7
    # variant is built in layer order, as fmnist 0.2.0 built it, so its seeds reproduce too.
    last_at_3x3 = [nn.MaxPool2d(2), *conv_block(c3, c3, True)] if pool_before_last_conv else []
    stem = conv_pool_block(1, c1)
    if whiten:  # same shape, drawn in the same order, so every other layer starts from the same weights
        stem[0] = PatchWhitening(c1)
    first = [
        *stem,  # (N,c1,14,14)
        *conv_pool_block(c1, c2),  # (N,c2,7,7)
        *conv_block(c2, c3, True),  # (N,c3,7,7)
    ]  # fmt: skip
    last = last_at_3x3 or conv_pool_block(c3, c3)  # (N,c3,3,3)
    features = nn.Sequential(*first, *last, nn.Flatten())  # (N,c3*9)
    # Grad-CAM reads the final activation (3x3): coarse, but on the 7x7 maps before it the
    # class evidence is so sparse that many heatmaps come out blank.
    return Classifier(features, nn.Linear(c3 * 9, num_classes), c3 * 9, channels_last=True)


# Every fastcnn_deep before fmnist 0.5 learned its first conv (no `whiten`).
@register_model(family="cnn", legacy_args={"whiten": False})
def fastcnn_deep(
    widths: tuple[int, ...] = (32, 96, 192), whiten: bool = False, num_classes: int = NUM_CLASSES
) -> Classifier:
    """fastcnn with two convs per stage (airbench's conv groups): the `cpu-95` recipe's net (16-64-128, whitened).

    Each stage is conv -> 2x2 max-pool -> BN -> ReLU -> conv -> BN -> ReLU, so the second conv
    of every stage runs on the pooled map (14x14, 7x7, 3x3), a quarter of the pixels it would
    see before pooling. `whiten`: the first conv is fastcnn's frozen PatchWhitening, which
    needs an even first width of at most 18 (a 3x3 patch has 9 directions, each taken with both signs).
    """
    widths = tuple(widths)
    if len(widths) != 3 or any(w < 1 for w in widths):
        raise ValueError("widths must be three positive channel counts, one per stage")
    layers: list[nn.Module] = []
    c_in = 1
    for width in widths:  # (N,w0,14,14) -> (N,w1,7,7) -> (N,w2,3,3)
        stem = conv_pool_block(c_in, width)
        if whiten and c_in == 1:  # built after the learned conv it replaces, as in fastcnn
            stem[0] = PatchWhitening(width)
        layers += [*stem, *conv_block(width, width, True)]
        c_in = width
    features = nn.Sequential(*layers, nn.Flatten())  # (N,w2*9)
    return Classifier(features, nn.Linear(c_in * 9, num_classes), c_in * 9, channels_last=True)
