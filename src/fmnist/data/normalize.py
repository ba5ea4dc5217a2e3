"""The one place pixels become model input: uint8 0-255 -> (pixel/255 - mean) / std, (N,1,28,28).

Training's loader, evaluation, `fmnist predict`, the server, the baselines and export all
call `normalize`, so a model is always fed exactly what it was trained on.
"""

from __future__ import annotations

import numpy as np
import torch


def normalize(images: torch.Tensor | np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 (N,28,28) images -> float32 (N,1,28,28) tensor on the images' device."""
    x = torch.as_tensor(images)
    return ((x.float() / 255.0 - mean) / std).unsqueeze(1)


def blank_value(mean: float, std: float) -> float:
    """What a black (0) pixel becomes after normalisation: the fill for shifts, crops and erasing."""
    return float((0.0 - mean) / std)
