"""Grad-CAM (Selvaraju et al. 2017): where in the image a CNN looked for the class it scored.

For the activations A (N,C,h,w) of the model's `cam_layer`, each channel is weighted by the
spatial mean of d(score)/dA; the weighted sum, passed through ReLU, is upsampled to 28x28
and scaled per image to [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fmnist.constants import IMAGE_SIZE
from fmnist.errors import UsageError

GARMENT_LEVEL = 30  # of 255: a pixel brighter than this is garment, not the black background
FLAT_RANGE = 0.1  # a map whose lowest value is within this share of its peak shows no place


def grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor | int | None = None) -> torch.Tensor:
    """Heatmaps (N,28,28) in [0,1] for normalised inputs `x` (N,1,28,28).

    `target` is the class to explain per image (a tensor of N labels or one int); by default
    the model's own prediction. An image whose map is zero everywhere (no positive evidence
    for the target) stays all zeros rather than being stretched into noise.
    """
    layer = getattr(model, "cam_layer", None)
    if layer is None:
        name = getattr(model, "model_name", type(model).__name__)
        raise UsageError(f"{name} has no convolutional layer for Grad-CAM (cam_layer is None)")
    if x.dim() != 4:
        raise UsageError(f"grad_cam expects (N,1,28,28) inputs, got shape {tuple(x.shape)}")
    captured: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        captured["activations"] = output

    was_training = model.training
    model.eval()  # dropout off, batch norm on running statistics: images stay independent
    handle = layer.register_forward_hook(keep)
    try:
        device = next(model.parameters()).device
        # Grad-CAM needs a graph even where parameters are frozen; the input requiring grad ensures one.
        inputs = x.detach().to(device).float().requires_grad_(True)
        with torch.enable_grad():
            logits = model(inputs)
            if target is None:
                classes = logits.argmax(1)
            elif isinstance(target, int):
                classes = torch.full((len(x),), target, dtype=torch.long, device=device)
            else:
                classes = torch.as_tensor(target, dtype=torch.long, device=device).reshape(-1)
            if len(classes) != len(x):
                raise UsageError(f"grad_cam: {len(classes)} targets for {len(x)} images")
            activations = captured["activations"]
            # Images are independent in eval mode, so one backward pass of the summed scores
            # yields every image's own gradient.
            scores = logits.gather(1, classes.view(-1, 1)).sum()
            (gradients,) = torch.autograd.grad(scores, activations)
    finally:
        handle.remove()
        model.train(was_training)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam.float(), size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    cam = cam.squeeze(1).clamp(min=0)
    peak = cam.flatten(1).max(1).values.view(-1, 1, 1)
    return torch.where(peak > 0, cam / peak.clamp(min=1e-12), torch.zeros_like(cam)).cpu()


def heat_on_object(heatmaps: torch.Tensor, images: torch.Tensor) -> float:
    """Share of the total heat that lies on the garment (pixels brighter than GARMENT_LEVEL).

    A plain-language check of a Grad-CAM: high means the model looked at the clothing,
    low means it looked at empty background.
    """
    mask = (images.reshape(heatmaps.shape) > GARMENT_LEVEL).float()
    total = heatmaps.sum()
    return float((heatmaps * mask).sum() / total) if total > 0 else float("nan")


def flat_maps(heatmaps: torch.Tensor) -> torch.Tensor:
    """Per map (N,28,28): True where it shows no place at all, so it should not be read as one.

    That is a map of zeros (no positive evidence for the class at this layer) or one whose
    lowest value is within FLAT_RANGE of its peak (the layer's map had a single cell, or
    every cell scored the same): an overlay of either paints the whole image one colour.
    """
    flat = heatmaps.flatten(1)
    peak, low = flat.max(1).values, flat.min(1).values
    return (peak <= 0) | (peak - low < FLAT_RANGE * peak)
