"""Test-time augmentation: one module that averages a model's logits over fixed views.

The same `TestTimeAugmentation` wraps the model in evaluation (`fmnist evaluate`, validation
during training) and inside exported ONNX graphs, so a served model answers exactly like the
evaluated one.

Levels (the config key `tta`):
- "none": the image alone;
- "flip": the image and its mirror (garments are left-right symmetric);
- "flip-shift": those two plus the image shifted by one pixel up, down, left and right
  (background fill), six views in all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fmnist.constants import TTA_LEVELS

# One-pixel shifts (dy, dx) of the flip-shift level.
_SHIFTS = ((-1, 0), (1, 0), (0, -1), (0, 1))


def shift(x: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    """Move (N,C,H,W) images by (dy, dx) pixels, filling the uncovered border with `fill`."""
    h, w = x.shape[-2:]
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))  # left, right, top, bottom
    padded = F.pad(x, pad, value=fill)
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top : top + h, left : left + w]


def views(x: torch.Tensor, level: str, fill: float) -> list[torch.Tensor]:
    """The views a TTA level averages over, the original first."""
    if level not in TTA_LEVELS:
        raise ValueError(f"tta must be one of {', '.join(TTA_LEVELS)}, not {level!r}")
    out = [x]
    if level in ("flip", "flip-shift"):
        out.append(x.flip(3))
    if level == "flip-shift":
        out += [shift(x, dy, dx, fill) for dy, dx in _SHIFTS]
    return out


class TestTimeAugmentation(nn.Module):
    """`model` averaged over the views of `level`; `fill` is a blank pixel after normalisation."""

    __test__ = False  # not a pytest class, whatever its name says

    def __init__(self, model: nn.Module, level: str = "none", fill: float = 0.0):
        super().__init__()
        views(torch.zeros(1, 1, 2, 2), level, fill)  # reject an unknown level now
        self.model = model
        self.level = level
        self.fill = fill

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.level == "none":
            return self.model(x)
        batch = torch.cat(views(x, self.level, self.fill))  # (V*N,1,28,28): one pass for all views
        logits = self.model(batch).float()
        return logits.reshape(-1, x.shape[0], logits.shape[-1]).mean(0)


def tta_level(settings: dict) -> str:
    """The TTA level a config or checkpoint records; files from fmnist 0.1 say `tta_flip` instead."""
    level = settings.get("tta")
    if level is None:
        return "flip" if settings.get("tta_flip") else "none"
    return str(level)
