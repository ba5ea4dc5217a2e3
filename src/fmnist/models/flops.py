"""Forward-pass FLOPs of a model on one 28x28 image, counted layer by layer with forward hooks.

Counted (FLOPs = 2 x multiply-accumulates):
- nn.Conv2d: 2 x (C_in / groups) x k_h x k_w per output element (depthwise and grouped convs included);
- nn.Linear: 2 x in_features per output element.
Biases, padding and everything that is not a module call (residual additions, the
squeeze-excite product, a tensor `.mean`) are not counted: they are a small share of a
convolutional net's arithmetic. With `elementwise=True`, normalisation layers add 2 FLOPs per
output element (scale and shift, as in eval mode) and activations 1 per element (the
sigmoid and SiLU's exponentials as one), which is closer to the memory traffic a CPU spends.
Pooling is never counted.
"""

from __future__ import annotations

import torch
from torch import nn

from fmnist.models.probe import leaves, probe

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU, nn.Tanh)


def _layer_flops(module: nn.Module, output: torch.Tensor, elementwise: bool) -> int:
    if isinstance(module, nn.Conv2d):
        k_h, k_w = module.kernel_size
        return 2 * (module.in_channels // module.groups) * k_h * k_w * output.numel()
    if isinstance(module, nn.Linear):
        return 2 * module.in_features * output.numel()
    if elementwise and isinstance(module, _NORMS):
        return 2 * output.numel()
    if elementwise and isinstance(module, _ACTIVATIONS):
        return output.numel()
    return 0


def flops_by_layer(model: nn.Module, *, elementwise: bool = False) -> dict[str, int]:
    """FLOPs of each counted leaf module (by qualified name) for one (1,1,28,28) zero image, in eval mode.

    Works on a model built on the meta device (only shapes are needed). A module called
    twice in one pass counts twice.
    """
    counts: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            flops = _layer_flops(module, output, elementwise)
            if flops:
                counts[name] = counts.get(name, 0) + flops

        return record

    probe(model, [(module, hook(name)) for name, module in leaves(model)])
    return counts


def forward_flops(model: nn.Module, *, elementwise: bool = False) -> int:
    """FLOPs (2 x multiply-accumulates) of one forward pass for one image; see the module docstring."""
    return sum(flops_by_layer(model, elementwise=elementwise).values())
