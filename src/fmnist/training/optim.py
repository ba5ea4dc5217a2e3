"""Optimizer, learning-rate schedule and weight averaging (EMA) for the training loop."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from fmnist.config import TrainConfig
from fmnist.training.muon import MuonAdamW, ParamGroup
from fmnist.training.state import JsonValue


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # No weight decay on biases and norm parameters: decaying them only hurts.
    trained = [p for p in model.parameters() if p.requires_grad]  # frozen layers (PatchWhitening) left out
    no_decay = [p for p in trained if p.dim() <= 1]
    decay = [p for p in trained if p.dim() > 1]
    if config.optimizer == "muon":  # Muon for conv filter banks (4-D), AdamW for every other decayed tensor
        filters = [p for p in decay if p.dim() == 4]
        others = [p for p in decay if p.dim() != 4]
        return MuonAdamW([ParamGroup(params=filters, weight_decay=config.weight_decay, muon=True),
                          ParamGroup(params=others, weight_decay=config.weight_decay),
                          ParamGroup(params=no_decay, weight_decay=0.0)], lr=config.lr)  # fmt: skip
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # On a GPU, one fused kernel updates every parameter (instead of a few launches per tensor).
    # The CPU keeps PyTorch's default implementation, whose results the CPU runs were measured with.
    fused = {"fused": True} if any(p.is_cuda for p in model.parameters()) else {}
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, **fused)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, **fused)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True, **fused)


class LRSchedule:
    """A learning-rate scheduler and when it steps: after every batch, or per epoch on validation loss."""

    def __init__(self, scheduler: Any | None, per_batch: bool):
        self.scheduler = scheduler
        self.per_batch = per_batch

    def after_batch(self) -> None:
        if self.scheduler is not None and self.per_batch:
            self.scheduler.step()

    def after_epoch(self, val_loss: float) -> None:
        if self.scheduler is not None and not self.per_batch:
            self.scheduler.step(val_loss)

    def state_dict(self) -> dict[str, JsonValue] | None:
        """The scheduler's state_dict (torch's keys; JSON values: it is saved in state.json), None without one."""
        return self.scheduler.state_dict() if self.scheduler is not None else None

    def load_state_dict(self, state: dict[str, JsonValue] | None) -> None:
        if self.scheduler is not None and state is not None:
            self.scheduler.load_state_dict(state)


def make_schedule(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> LRSchedule:
    steps = max(total_steps, 1)
    if config.scheduler == "onecycle":
        # OneCycleLR divides by its warm-up's length in steps less one, zero where that is one step
        # (a 4-step smoke run at 0.25): such a run warms up for a step and a half.
        warmup = 1.5 / steps if math.isclose(config.warmup_fraction * steps, 1.0) else config.warmup_fraction
        return LRSchedule(torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps,
                                                              pct_start=warmup), per_batch=True)  # fmt: skip
    if config.scheduler == "cosine":
        return LRSchedule(torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps), per_batch=True)
    if config.scheduler == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=2)
        return LRSchedule(plateau, per_batch=False)
    return LRSchedule(None, per_batch=False)


class WeightAverage:
    """An exponential moving average of a model's weights (`--ema DECAY`).

    Validation, test, checkpoint and export all read `self.model` when EMA is on. Two choices
    keep the average usable from the first epoch (timm's ModelEma does the same):
    - the decay warms up as min(DECAY, (1 + step) / (10 + step)): a fixed 0.999 would still
      hold 65% of the random initial weights after a 430-step epoch;
    - BatchNorm statistics are averaged like the weights, so they describe the averaged net
      rather than the live one (copying them made cpu-94 read 16-85% on validation in epochs 1-5).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in `model` after optimizer step number `step` (0-based, saved with the run's state)."""
        weight = 1.0 - self.decay_at(step)
        averaged = [*self.model.parameters()]
        live = [p.detach() for p in model.parameters()]
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            if mine.is_floating_point():
                averaged.append(mine)
                live.append(theirs)
            else:  # BatchNorm's num_batches_tracked
                mine.copy_(theirs)
        torch._foreach_lerp_(averaged, live, weight)
