"""Training: `fit(config) -> RunResult`. No printing here; progress goes to callbacks."""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fmnist.config import TrainConfig
from fmnist.data.dataset import FashionMNIST
from fmnist.data.loader import Augmentation, TensorLoader, stratified_split, to_model_input
from fmnist.errors import UsageError
from fmnist.evaluate import Evaluation, autocast_context, evaluate_logits, predict
from fmnist.models.registry import count_parameters, create_model, model_size_mb


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    steps: int
    seconds: float  # training time so far, validation included
    images_per_second: float


@dataclass
class RunResult:
    config: TrainConfig
    model: nn.Module  # holds the best-by-validation weights, in eval mode
    history: list[EpochRecord]
    best_epoch: int
    epochs_run: int
    steps: int
    train_seconds: float
    test: Evaluation
    test_logits: torch.Tensor
    params: int
    size_mb: float
    data: dict[str, Any]
    device: str
    precision: str
    stopped_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def test_accuracy(self) -> float:
        return self.test.accuracy

    def summary(self) -> dict[str, Any]:
        """What results.json holds."""
        return {
            "model": self.config.model,
            "model_args": {k: list(v) if isinstance(v, tuple) else v for k, v in self.config.model_args.items()},
            "params": self.params,
            "size_mb": round(self.size_mb, 4),
            "test_accuracy": self.test.accuracy,
            "test_loss": self.test.loss,
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.history[self.best_epoch - 1].val_accuracy if self.best_epoch else None,
            "epochs_run": self.epochs_run,
            "steps": self.steps,
            "stopped_early": self.stopped_early,
            "train_seconds": round(self.train_seconds, 3),
            "seed": self.config.seed,
            "device": self.device,
            "precision": self.precision,
            "data": self.data,
            "confusion": self.test.confusion,
            "per_class": self.test.per_class,
            "most_confused": self.test.most_confused,
            **self.extra,
        }


class TrainCallback:
    """Hooks for progress display and run-directory writing; every method is optional."""

    def on_start(self, config: TrainConfig, model: nn.Module, steps_per_epoch: int, total_steps: int) -> None: ...
    def on_step(self, step: int, epoch: int, loss: float, accuracy: float, images_per_second: float) -> None: ...
    def on_epoch_end(self, record: EpochRecord, model: nn.Module, is_best: bool) -> None: ...
    def on_end(self, result: RunResult) -> None: ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but no CUDA GPU is available")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto' picks bf16 autocast where matrix units make it fast: CUDA with bf16, AMX CPUs."""
    if name != "auto":
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UsageError("--precision bf16 needs a GPU with bf16 support")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return "bf16" if amx() else "fp32"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # No weight decay on biases and norm parameters: decaying them only hurts.
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    """Returns (scheduler or None, steps per batch: bool)."""
    if config.scheduler == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=max(total_steps, 1), pct_start=config.warmup_fraction
        )
        return sched, True
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1)), True
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=2), False
    return None, False


def uses_channels_last(model: nn.Module) -> bool:
    return getattr(model, "family", "") in ("cnn", "resnet")


def fit(
    config: TrainConfig,
    dataset: FashionMNIST | None = None,
    callbacks: Sequence[TrainCallback] = (),
) -> RunResult:
    """Train `config.model` and evaluate its best-by-validation weights on the test split."""
    config.validate()
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    if dataset is None:
        from fmnist.data.sources import resolve_dataset

        dataset = resolve_dataset(config.data_dir or None)
    seed_everything(config.seed)

    train_idx, val_idx = stratified_split(dataset.train_labels, config.val_size, config.seed)
    images = torch.from_numpy(dataset.train_images)
    labels = torch.from_numpy(dataset.train_labels)
    model = create_model(config.model, **config.model_args).to(device)
    channels_last = uses_channels_last(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = TensorLoader(
        images[train_idx],
        labels[train_idx],
        batch_size=config.batch_size,
        mean=config.input_mean,
        std=config.input_std,
        device=device,
        shuffle=True,
        augmentation=Augmentation(config.flip, config.translate, config.erase),
        generator=torch.Generator().manual_seed(config.seed + 1),
        channels_last=channels_last,
    )
    val_x = to_model_input(images[val_idx], config.input_mean, config.input_std)
    val_y = labels[val_idx].long()

    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    optimizer = make_optimizer(config, model)
    scheduler, per_batch = make_scheduler(config, optimizer, total_steps)
    for cb in callbacks:
        cb.on_start(config, model, steps_per_epoch, total_steps)

    history: list[EpochRecord] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch, best_key = 0, (-math.inf, -math.inf)
    epochs_without_gain = 0
    step, elapsed, stopped_early = 0, 0.0, False
    for epoch in range(1, config.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for x, y in loader:
            with autocast_context(device, precision):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None and per_batch:
                scheduler.step()
            step += 1
            with torch.no_grad():
                batch_correct = (logits.argmax(1) == y).sum()
                loss_sum += loss.detach() * len(y)
                correct += batch_correct
            seen += len(y)
            if callbacks:
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                for cb in callbacks:
                    cb.on_step(step, epoch, loss.item(), batch_correct.item() / len(y), rate)
            if config.max_steps and step >= config.max_steps:
                break
        train_time = time.perf_counter() - t0

        val_loss = val_acc = None
        if len(val_y):
            # Evaluation always runs in fp32, so results match `fmnist evaluate` exactly.
            val_logits = predict(model, val_x, batch_size=config.eval_batch_size, tta_flip=config.tta_flip)
            val_loss = F.cross_entropy(val_logits, val_y).item()
            val_acc = (val_logits.argmax(1) == val_y).float().mean().item()
            if scheduler is not None and not per_batch:
                scheduler.step(val_loss)
        elapsed += time.perf_counter() - t0
        record = EpochRecord(
            epoch=epoch,
            train_loss=(loss_sum / max(seen, 1)).item(),
            train_accuracy=correct.item() / max(seen, 1),
            val_loss=val_loss,
            val_accuracy=val_acc,
            lr=optimizer.param_groups[0]["lr"],
            steps=step,
            seconds=elapsed,
            images_per_second=seen / max(train_time, 1e-9),
        )
        history.append(record)
        # Best by validation accuracy, ties broken by lower loss; without validation, the last epoch.
        key = (val_acc, -val_loss) if val_acc is not None else (epoch, 0)
        is_best = key > best_key
        if is_best:
            best_key, best_epoch, epochs_without_gain = key, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            epochs_without_gain += 1
        for cb in callbacks:
            cb.on_epoch_end(record, model, is_best)
        if config.max_steps and step >= config.max_steps:
            break
        if config.early_stopping and epochs_without_gain >= config.early_stopping:
            stopped_early = True
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    test_x = to_model_input(torch.from_numpy(dataset.test_images), config.input_mean, config.input_std)
    test_logits = predict(model, test_x, batch_size=config.eval_batch_size, tta_flip=config.tta_flip)
    test = evaluate_logits(test_logits, torch.from_numpy(dataset.test_labels))
    result = RunResult(
        config=config,
        model=model,
        history=history,
        best_epoch=best_epoch,
        epochs_run=len(history),
        steps=step,
        train_seconds=elapsed,
        test=test,
        test_logits=test_logits,
        params=count_parameters(model),
        size_mb=model_size_mb(model),
        data=dataset.provenance.to_dict(),
        device=str(device),
        precision=precision,
        stopped_early=stopped_early,
    )
    for cb in callbacks:
        cb.on_end(result)
    return result
