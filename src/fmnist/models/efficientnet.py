"""EfficientNet-B0 (Tan & Le 2019) for one-channel 28x28 images: its MBConv stack with strides fitted to the size."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import nn

from fmnist.constants import NUM_CLASSES
from fmnist.models.base import Classifier, GlobalAvgPool
from fmnist.models.registry import register_model
from fmnist.models.resnet import he_init

# The paper's BatchNorm epsilon (its TensorFlow code); the momentum stays PyTorch's 0.1, since
# TensorFlow's 0.99 (0.01 here) would leave the running statistics stale after a few short epochs.
_BN_EPS = 1e-3
_SE_RATIO = 0.25  # squeeze width as a share of the block's input channels
_STEM_WIDTH, _HEAD_WIDTH = 32, 1280


class Stage(NamedTuple):
    expand: int
    kernel: int
    stride: int  # the paper's, on 224x224 inputs
    channels: int
    repeats: int


# B0's seven stages. At 224x224 the paper halves the resolution five times: at the stem and at
# stages 2, 3, 4 and 6 (total stride 32, last maps 7x7). A 28x28 image is already the size
# B0's stage 3 produces, so by default the stem and stages 2-3 run at stride 1 and only the
# halvings of stages 4 and 6 are kept: total stride 4, last maps 7x7, and stages 3-7 see the
# resolutions they see in the paper. `total_stride=8` keeps stage 3's halving too (4x4 last
# maps, a third of the FLOPs).
B0_STAGES = (
    Stage(1, 3, 1, 16, 1),
    Stage(6, 3, 2, 24, 2),
    Stage(6, 5, 2, 40, 2),
    Stage(6, 3, 2, 80, 3),
    Stage(6, 5, 1, 112, 3),
    Stage(6, 5, 2, 192, 4),
    Stage(6, 3, 1, 320, 1),
)
_TOTAL_STRIDES = (1, 2, 4, 8, 16)  # 16 keeps every stage's halving: 28 -> 14 -> 7 -> 4 -> 2


def stage_strides(total_stride: int) -> list[int]:
    """Each stage's stride on 28x28: the paper's stage halvings, only the last log2(total_stride) of them."""
    keep = int(math.log2(total_stride))
    halving = [i for i, stage in enumerate(B0_STAGES) if stage.stride == 2]
    kept = set(halving[len(halving) - keep :]) if keep else set()
    return [2 if i in kept else 1 for i in range(len(B0_STAGES))]


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS)


def conv_bn_act(c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        _bn(c_out),
        nn.SiLU(inplace=True),
    )


class SqueezeExcite(nn.Module):
    """Channel gates from the global mean: reduce to `squeezed` channels, SiLU, expand, sigmoid."""

    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability p, scale the rest by 1/(1-p)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, squeeze-excite, 1x1 project (no activation)."""

    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int, drop_path: float):
        super().__init__()
        hidden = c_in * expand
        self.expand = conv_bn_act(c_in, hidden) if expand != 1 else nn.Identity()
        self.depthwise = conv_bn_act(hidden, hidden, kernel, stride, groups=hidden)
        self.se = SqueezeExcite(hidden, max(1, int(c_in * _SE_RATIO)))
        self.project = nn.Sequential(nn.Conv2d(hidden, c_out, 1, bias=False), _bn(c_out))
        self.residual = stride == 1 and c_in == c_out
        # Only a residual block can be skipped: without the shortcut nothing would pass through.
        self.drop_path = DropPath(drop_path) if self.residual and drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return x + self.drop_path(out) if self.residual else out


def round_channels(channels: int, width_mult: float, divisor: int = 8) -> int:
    """Scale a width and round to a multiple of 8, never more than 10% below the scaled value (the reference code's rule)."""
    scaled = channels * width_mult
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


@register_model(family="efficientnet")
def efficientnet_b0(
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    drop_path: float = 0.2,
    dropout: float = 0.2,
    total_stride: int = 4,
    num_classes: int = NUM_CLASSES,
) -> Classifier:
    """EfficientNet-B0: MBConv stages 16-24-40-80-112-192-320, SE 0.25, SiLU, 1280-wide head; stride 4 on 28x28.

    The stem keeps stride 1 and, by default, so do stages 2-3 (the paper halves at each of
    them on 224x224), so 28x28 inputs end in 7x7 maps as the paper's do; see B0_STAGES for
    `total_stride`. `width_mult` and
    `depth_mult` scale channels (rounded to multiples of 8) and repeats (rounded up) as the
    paper's compound scaling does. Stochastic depth rises linearly with the block index: block
    i of B skips its residual branch with probability drop_path * i / B (the reference
    implementations' schedule). `dropout` acts on the pooled features before the head.
    """
    for label, mult in (("width_mult", width_mult), ("depth_mult", depth_mult)):
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not mult > 0:
            raise ValueError(f"{label} must be a positive number, not {mult!r}")
    for label, rate in (("drop_path", drop_path), ("dropout", dropout)):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{label} must be in [0, 1), not {rate!r}")
    if isinstance(total_stride, bool) or total_stride not in _TOTAL_STRIDES:
        raise ValueError(f"total_stride must be one of {', '.join(map(str, _TOTAL_STRIDES))}, not {total_stride!r}")
    strides = stage_strides(total_stride)
    repeats = [math.ceil(stage.repeats * depth_mult) for stage in B0_STAGES]
    total_blocks, block_index = sum(repeats), 0
    stem = round_channels(_STEM_WIDTH, width_mult)
    layers: OrderedDict[str, nn.Module] = OrderedDict(stem=conv_bn_act(1, stem, 3))  # (N,32,28,28)
    c_in = stem
    for number, (stage, stride, count) in enumerate(zip(B0_STAGES, strides, repeats), start=1):
        c_out = round_channels(stage.channels, width_mult)
        blocks = []
        for i in range(count):
            rate = drop_path * block_index / total_blocks
            blocks.append(MBConv(c_in, c_out, stage.expand, stage.kernel, stride if i == 0 else 1, rate))
            c_in, block_index = c_out, block_index + 1
        # B0, stride 4: (N,16,28,28) (N,24,28,28) (N,40,28,28) (N,80,14,14) (N,112,14,14) (N,192,7,7) (N,320,7,7)
        layers[f"stage{number}"] = nn.Sequential(*blocks)
    head = round_channels(_HEAD_WIDTH, width_mult)
    layers["head"] = conv_bn_act(c_in, head)  # (N,1280,7,7) at stride 4: Grad-CAM's layer
    layers["pool"] = GlobalAvgPool()
    layers["flatten"] = nn.Flatten()  # (N,1280)
    if dropout > 0:
        layers["dropout"] = nn.Dropout(dropout)
    return Classifier(he_init(nn.Sequential(layers)), nn.Linear(head, num_classes), head, channels_last=True)
