"""A layer-by-layer summary of a model (our own, so torchinfo is not a dependency)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fmnist.constants import IMAGE_SIZE


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]  # without the batch dimension
    params: int


def layer_summary(model: nn.Module) -> list[LayerRow]:
    """Every leaf module in the order a forward pass runs it, with its output shape and parameters."""
    rows: list[LayerRow] = []
    names = {module: name for name, module in model.named_modules()}
    handles = []

    def record(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else ()
        params = sum(p.numel() for p in module.parameters(recurse=False))
        rows.append(LayerRow(names.get(module, "?"), type(module).__name__, shape, params))

    for module in model.modules():
        if not list(module.children()):
            handles.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    # A module run twice (a shared ReLU) counts its parameters once.
    seen: set[str] = set()
    out = []
    for row in rows:
        out.append(row if row.name not in seen else LayerRow(row.name, row.kind, row.output_shape, 0))
        seen.add(row.name)
    return out
