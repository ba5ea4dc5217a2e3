"""One blank image through a model with forward hooks: how layer summaries, FLOP counts and
Grad-CAM's layer search see what each module outputs (shapes only, so meta-built models work)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from fmnist.constants import IMAGE_SIZE

Hook = Callable[[nn.Module, tuple, torch.Tensor], None]


def probe(model: nn.Module, hooks: Iterable[tuple[nn.Module, Hook]], run: nn.Module | None = None,
          side: int = IMAGE_SIZE) -> None:  # fmt: skip
    """Attach `hooks` (module, fn), run one (1,1,side,side) zero image through `run` (default `model`)
    in eval mode without gradients, then remove the hooks and restore the training mode."""
    handles = [module.register_forward_hook(fn) for module, fn in hooks]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            (run or model)(torch.zeros(1, 1, side, side, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules with no children, by qualified name, in registration order."""
    return [(name, m) for name, m in model.named_modules() if not list(m.children())]
