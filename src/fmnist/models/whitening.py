"""A first convolution set from the data instead of learned: it whitens the images' 3x3 patches.

airbench's idea, for one grey channel: the filters are the top principal directions of the
training images' 3x3 patches, each scaled by 1 / sqrt(variance + eps), and their negatives
(a max-pool follows, and keeps both signs of an edge). Frozen, the layer costs no backward
pass: nothing before it needs a gradient, so autograd also skips the max-pool's backward.

Screening on validation, single view (fastcnn, 4 epochs of the fast schedule at lr 5e-3, seeds 0-1, one
thread each on a 2-core Zen 4): 93.04/92.90% frozen and 92.88/93.00% trained from the
whitened start, against 92.76/92.46% for the learned first conv and 92.84/92.38% for the
5-epoch `fast` recipe of the time. fastcnn whitens by default (`--model-arg whiten=false` learns the first conv).

Until it is fit the layer is zeros, and a net built on it learns nothing: training it unfit is an
error, not a silent 10%. The trainer fits it before the first step; a checkpoint's weights carry
the fitted filters, so loading them counts as fit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fmnist.errors import UsageError

# How many training images the patch statistics come from: 7.5 million patches, a fraction of
# a second, and the filters no longer move with the sample.
FIT_IMAGES = 10_000


class PatchWhitening(nn.Conv2d):
    """3x3 convolution, 1 -> `out_channels` (even), padding 1, no bias, frozen; set by `fit`."""

    def __init__(self, out_channels: int, eps: float = 1e-2):
        if out_channels < 2 or out_channels % 2 or out_channels // 2 > 9:
            raise ValueError(f"out_channels must be even, 2-18 (a 3x3 patch has 9 directions), not {out_channels}")
        super().__init__(1, out_channels, 3, padding=1, bias=False)
        self.eps = eps
        self.weight.requires_grad_(False)
        self.fitted = False

    def reset_parameters(self) -> None:
        # Zeros until `fit`, and no draw from the RNG: fastcnn builds the learned conv first and
        # swaps this in, so every later layer starts from the weights it would have without it.
        nn.init.zeros_(self.weight)

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """Set the filters from normalised training images (N,1,H,W); float64 on the CPU, so any device agrees."""
        x = images[:FIT_IMAGES].detach().to("cpu", torch.float64)
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"fit expects (N,1,H,W) images, got shape {tuple(x.shape)}")
        patches = F.unfold(x, 3).transpose(1, 2).reshape(-1, 9)  # (N*(H-2)*(W-2), 9), borders left out
        patches = patches - patches.mean(0)
        covariance = patches.T @ patches / len(patches)  # (9,9)
        variances, directions = torch.linalg.eigh(covariance)  # ascending
        k = self.out_channels // 2
        variances, directions = variances.flip(0)[:k], directions.flip(1)[:, :k]
        filters = (directions / torch.sqrt(variances + self.eps)).T  # (k,9)
        weight = torch.cat([filters, -filters]).view(self.out_channels, 1, 3, 3)
        self.weight.copy_(weight.to(self.weight.dtype))
        self.fitted = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Only training is refused: shape probes (FLOPs, layer summaries) run unfit nets in eval mode.
        if self.training and not self.fitted:
            raise UsageError("the patch-whitening first conv is set from the training images before training: "
                             "call fmnist.models.whitening.fit_to_data(model, images) first (fmnist train does), "
                             "or build the net with whiten=False")  # fmt: skip
        return super().forward(x)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "weight" in state_dict:  # filters fit when the weights were saved (a checkpoint, a state)
            self.fitted = True


def fit_to_data(model: nn.Module, images: Callable[[], torch.Tensor]) -> int:
    """Fit every PatchWhitening layer of `model` to `images()`, normalised (N,1,H,W); returns how many.

    `images` is called only when the model has such a layer, so other models never prepare them.
    """
    layers = [m for m in model.modules() if isinstance(m, PatchWhitening)]
    if layers:
        sample = images()
        for layer in layers:
            layer.fit(sample)
    return len(layers)
