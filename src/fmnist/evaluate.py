"""Inference and evaluation: `predict(model, x) -> logits`; every metric is derived from those."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmnist import metrics
from fmnist.constants import CLASS_NAMES
from fmnist.data.loader import to_model_input
from fmnist.device import autocast_context, resolve_precision


def model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def predict(
    model: nn.Module,
    x: torch.Tensor,
    *,
    batch_size: int = 1024,
    precision: str = "auto",
    tta_flip: bool = False,
) -> torch.Tensor:
    """Logits (N, C) float32 on the CPU for normalised inputs `x` (N,1,28,28), in eval mode.

    `precision` "auto" uses bf16 autocast where the hardware makes it fast (as training
    does), so `fmnist evaluate` reproduces the accuracy recorded at training time on the
    same machine. With `tta_flip` the logits are the mean over each image and its mirror.
    """
    was_training = model.training
    model.eval()
    device = model_device(model)
    channels_last = _prefers_channels_last(model)
    outputs = []
    try:
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size].to(device, non_blocking=True)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast_context(device, precision):
                logits = model(batch).float()
                if tta_flip:
                    mirrored = batch.flip(3)
                    if channels_last:
                        mirrored = mirrored.contiguous(memory_format=torch.channels_last)
                    logits = (logits + model(mirrored).float()) / 2
            outputs.append(logits.cpu())
    finally:
        model.train(was_training)
    if not outputs:
        return torch.empty(0, getattr(model, "num_classes", len(CLASS_NAMES)))
    return torch.cat(outputs)


def _prefers_channels_last(model: nn.Module) -> bool:
    return any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in model.parameters())  # fmt: skip


@dataclass
class Evaluation:
    accuracy: float
    loss: float
    confusion: list[list[int]]
    per_class: list[dict[str, Any]]
    most_confused: list[dict[str, Any]]
    num_images: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_logits(logits: torch.Tensor, labels: torch.Tensor, class_names=CLASS_NAMES, top_pairs: int = 5) -> Evaluation:
    labels = labels.long()
    predicted = logits.argmax(1)
    cm = metrics.confusion_matrix(labels, predicted, len(class_names))
    per_class = [
        {**asdict(r), "accuracy": r.recall, "errors": r.errors} for r in metrics.per_class_report(cm, tuple(class_names))
    ]
    pairs = [
        {
            "true": class_names[p.true_class],
            "predicted": class_names[p.predicted_class],
            "count": p.count,
            "fraction_of_true": p.fraction_of_true,
        }
        for p in metrics.most_confused_pairs(cm, top_pairs)
    ]
    return Evaluation(
        accuracy=metrics.accuracy(labels, predicted),
        loss=metrics.cross_entropy(logits, labels),
        confusion=cm.tolist(),
        per_class=per_class,
        most_confused=pairs,
        num_images=len(labels),
    )


def evaluate_run(run_dir: Path, data_dir: str | None = None, notify=lambda _: None) -> tuple[Evaluation, dict]:
    """Load a run's checkpoint and score it on the test split of the dataset it names."""
    from fmnist.checkpoint import load_checkpoint
    from fmnist.data.sources import resolve_dataset

    model, meta = load_checkpoint(run_dir)
    dataset = resolve_dataset(data_dir, notify=notify)
    norm = meta["normalization"]
    x = to_model_input(torch.from_numpy(dataset.test_images), norm["mean"], norm["std"])
    precision = resolve_precision("auto", model_device(model))
    logits = predict(model, x, precision=precision, tta_flip=bool(meta.get("tta_flip")))
    evaluation = evaluate_logits(logits, torch.from_numpy(dataset.test_labels), tuple(meta["class_names"]))
    return evaluation, {"model": meta["model"], "precision": precision, "data": dataset.provenance.to_dict()}
