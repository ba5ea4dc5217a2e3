"""Wide ResNets (Zagoruyko & Komodakis 2016): pre-activation blocks, three stages of width 16k, 32k, 64k."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from fmnist.constants import NUM_CLASSES
from fmnist.models.base import Classifier, GlobalAvgPool
from fmnist.models.registry import register_model
from fmnist.models.resnet import he_init


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 with a residual connection.

    When the width or resolution changes, the 1x1 projection reads the pre-activated input,
    as the authors' code does, so the shortcut sees normalised values like the branch.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.projection = (
            None if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        shortcut = x if self.projection is None else self.projection(pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + shortcut


def wide_resnet(depth: int, widen_factor: int, dropout: float, num_classes: int) -> Classifier:
    """WRN-depth-k for one-channel 28x28 images: 28x28 -> 14x14 -> 7x7 at widths 16k, 32k, 64k."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError(f"depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), not {depth!r}")
    if isinstance(widen_factor, bool) or not isinstance(widen_factor, int) or widen_factor < 1:
        raise ValueError(f"widen_factor must be a positive integer, not {widen_factor!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), not {dropout!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, not {num_classes!r}")
    blocks = (depth - 4) // 6  # the paper's depth 6n+4 has n blocks per stage
    widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)

    def stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
        return nn.Sequential(*(WideBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, dropout)
                               for i in range(blocks)))  # fmt: skip

    features = nn.Sequential(OrderedDict([
        ("stem", nn.Conv2d(1, 16, 3, padding=1, bias=False)),  # (N,16,28,28)
        ("stage1", stage(16, widths[0], 1)),  # (N,16k,28,28)
        ("stage2", stage(widths[0], widths[1], 2)),  # (N,32k,14,14)
        ("stage3", stage(widths[1], widths[2], 2)),  # (N,64k,7,7)
        # Pre-activation blocks end on a convolution: the last BN-ReLU normalises the sum.
        ("norm", nn.BatchNorm2d(widths[2])),
        ("act", nn.ReLU(inplace=True)),  # (N,64k,7,7): Grad-CAM's layer
        ("pool", GlobalAvgPool()),
        ("flatten", nn.Flatten()),  # (N,64k)
    ]))  # fmt: skip
    return Classifier(he_init(features), nn.Linear(widths[2], num_classes), widths[2], channels_last=True)


@register_model(family="resnet")
def wrn(depth: int = 16, widen_factor: int = 4, dropout: float = 0.0, num_classes: int = NUM_CLASSES) -> Classifier:
    """Wide ResNet WRN-depth-k: `depth` = 6n+4, widths 16k-32k-64k, pre-activation blocks."""
    return wide_resnet(depth, widen_factor, dropout, num_classes)


@register_model(family="resnet")
def wrn16_4(dropout: float = 0.0, num_classes: int = NUM_CLASSES) -> Classifier:
    """WRN-16-4: 2 blocks per stage, widths 64-128-256 (2,748,602 params)."""
    return wide_resnet(16, 4, dropout, num_classes)


@register_model(family="resnet")
def wrn28_10(dropout: float = 0.3, num_classes: int = NUM_CLASSES) -> Classifier:
    """WRN-28-10: 4 blocks per stage, widths 160-320-640 (36.5M params), dropout 0.3 as in the paper's best CIFAR runs."""
    return wide_resnet(28, 10, dropout, num_classes)
