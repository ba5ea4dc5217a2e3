"""Inference and evaluation: `predict(model, x) -> logits`; every metric is derived from those."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fmnist.analysis import metrics
from fmnist.analysis.metrics import ClassRow, ConfusedRow
from fmnist.constants import CLASS_NAMES, EVAL_BATCH_SIZE
from fmnist.data.normalize import blank_value, normalize
from fmnist.device import autocast_context, resolve_precision
from fmnist.inference.tta import TestTimeAugmentation, tta_level
from fmnist.models.base import Classifier

if TYPE_CHECKING:
    from fmnist.inference.checkpoint import ModelMeta


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
    batch_size: int = EVAL_BATCH_SIZE,
    precision: str = "auto",
    tta: str = "none",
    blank: float = 0.0,
) -> torch.Tensor:
    """Logits (N, C) float32 on the CPU for normalised inputs `x` (N,1,28,28), in eval mode.

    `precision` "auto" uses bf16 autocast where the hardware computes it natively (as
    training does), so `fmnist evaluate` reproduces the accuracy recorded at training time on
    the same machine. `tta` averages the logits over views of each image (fmnist.inference.tta);
    `blank` is a black pixel's normalised value, which shifted views fill in.
    """
    was_training = model.training
    model.eval()
    device = model_device(model)
    averaged = TestTimeAugmentation(model, tta, blank)
    outputs = []
    try:
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size].to(device, non_blocking=True)
            if isinstance(model, Classifier):
                batch = model.layout(batch)
            with autocast_context(device, precision):
                outputs.append(averaged(batch).float().cpu())
    finally:
        model.train(was_training)
    if not outputs:
        return torch.empty(0, getattr(model, "num_classes", len(CLASS_NAMES)))
    return torch.cat(outputs)


def predict_checkpoint(model: nn.Module, meta: ModelMeta, images: np.ndarray | torch.Tensor, *,
                       precision: str = "auto", batch_size: int = EVAL_BATCH_SIZE) -> torch.Tensor:  # fmt: skip
    """Logits for uint8 (N,28,28) images, normalised and averaged as the checkpoint's metadata says."""
    mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]
    return predict(model, normalize(images, mean, std), batch_size=batch_size, precision=precision,
                   tta=tta_level(meta), blank=blank_value(mean, std))  # fmt: skip


@dataclass
class Evaluation:
    accuracy: float
    loss: float
    confusion: list[list[int]]
    per_class: list[ClassRow]
    most_confused: list[ConfusedRow]
    num_images: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def evaluate_logits(
    logits: torch.Tensor, labels: torch.Tensor, class_names=CLASS_NAMES, top_pairs: int = 5
) -> Evaluation:
    labels = labels.long()
    predicted = logits.argmax(1)
    cm = metrics.confusion_matrix(labels, predicted, len(class_names))
    per_class = [
        ClassRow(**asdict(r), accuracy=r.recall, errors=r.errors)
        for r in metrics.per_class_report(cm, tuple(class_names))
    ]
    pairs = [
        ConfusedRow(true=class_names[p.true_class], predicted=class_names[p.predicted_class], count=p.count,
                    fraction_of_true=p.fraction_of_true)
        for p in metrics.most_confused_pairs(cm, top_pairs)
    ]  # fmt: skip
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
    from fmnist.data.sources import resolve_dataset
    from fmnist.inference.checkpoint import load_checkpoint

    model, meta = load_checkpoint(run_dir)
    dataset = resolve_dataset(data_dir, notify=notify)
    precision = resolve_precision("auto", model_device(model))
    logits = predict_checkpoint(model, meta, dataset.test_images, precision=precision)
    evaluation = evaluate_logits(logits, torch.from_numpy(dataset.test_labels), tuple(meta["class_names"]))
    return evaluation, {"model": meta["model"], "precision": precision, "data": dataset.provenance.to_dict()}
