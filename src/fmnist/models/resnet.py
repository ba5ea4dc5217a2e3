"""ResNets for 28x28 inputs: a small configurable one and the CIFAR form of ResNet-18."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from fmnist.constants import NUM_CLASSES
from fmnist.models.base import Classifier, GlobalAvgPool
from fmnist.models.registry import register_model


def he_init(model: nn.Module) -> nn.Module:
    """He et al. (2015) normal init, fan-out mode, on every convolution, as the reference code of
    ResNet, Wide ResNet and EfficientNet does; PyTorch's default (variance 1/(3 fan-in)) was
    chosen for other nets and starts deep ones with activations shrinking layer by layer."""
    for module in model.modules():
        # A meta-device build (config validation) has no values to set, and its first random
        # fill would cost seconds of one-time set-up in torch.
        if isinstance(module, nn.Conv2d) and not module.weight.is_meta:
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


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
    features = nn.Sequential(*layers, GlobalAvgPool(), nn.Flatten())  # (N, widths[-1])
    return Classifier(features, nn.Linear(c_in, num_classes), c_in, channels_last=True)


def _stage(c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
    """`blocks` BasicBlocks; only the first changes width or resolution."""
    return nn.Sequential(*(BasicBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1)
                           for i in range(blocks)))  # fmt: skip


@register_model(family="resnet")
def resnet18(num_classes: int = NUM_CLASSES) -> Classifier:
    """ResNet-18, CIFAR form: 3x3 stem, no max-pool, stages 64-128-256-512 (11,172,810 params).

    ImageNet's 7x7/2 stem and max-pool would leave a 28x28 image 7x7 before the first block;
    the CIFAR form keeps full resolution there and halves it at stages 2-4 (28-14-7-4).
    """
    features = nn.Sequential(OrderedDict([
        ("stem", nn.Sequential(nn.Conv2d(1, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))),  # (N,64,28,28)
        ("layer1", _stage(64, 64, 2, 1)),  # (N,64,28,28)
        ("layer2", _stage(64, 128, 2, 2)),  # (N,128,14,14)
        ("layer3", _stage(128, 256, 2, 2)),  # (N,256,7,7)
        ("layer4", _stage(256, 512, 2, 2)),  # (N,512,4,4)
        ("pool", GlobalAvgPool()),
        ("flatten", nn.Flatten()),  # (N,512)
    ]))  # fmt: skip
    return Classifier(he_init(features), nn.Linear(512, num_classes), 512, channels_last=True)
