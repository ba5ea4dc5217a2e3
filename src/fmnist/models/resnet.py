"""A small ResNet for 28x28 inputs: for accuracy when training time matters less."""

from __future__ import annotations

import torch
from torch import nn

from fmnist.constants import NUM_CLASSES
from fmnist.models.base import Classifier
from fmnist.models.registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN with an identity (or 1x1 projection) shortcut, as in He et al. 2016."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


@register_model(family="resnet")
def resnet_small(
    widths: tuple[int, ...] = (32, 64, 128),
    blocks_per_stage: int = 1,
    num_classes: int = NUM_CLASSES,
) -> Classifier:
    """ResNet-style: stem conv, one stage per width (stride 2 after the first), global average pool."""
    widths = tuple(widths)
    if not widths or any(w < 1 for w in widths) or blocks_per_stage < 1:
        raise ValueError("widths must be positive and blocks_per_stage at least 1")
    layers: list[nn.Module] = [
        nn.Conv2d(1, widths[0], 3, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    ]  # (N,w0,28,28)
    c_in = widths[0]
    for stage, width in enumerate(widths):
        for block in range(blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1  # 28 -> 14 -> 7 -> 4
            layers.append(BasicBlock(c_in, width, stride))
            c_in = width
    cam_index = len(layers) - 1
    features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())  # (N, widths[-1])
    return Classifier(features, nn.Linear(c_in, num_classes), c_in, cam_layer_name=f"features.{cam_index}")
