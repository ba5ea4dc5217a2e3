"""A run's test-set predictions recomputed from its checkpoint, and its random-weights baseline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fmnist.analysis import metrics
from fmnist.constants import EVAL_BATCH_SIZE
from fmnist.data.normalize import blank_value, normalize
from fmnist.inference.checkpoint import ModelMeta, load_checkpoint
from fmnist.inference.evaluate import predict, predict_checkpoint
from fmnist.inference.tta import tta_level


@dataclass
class RunPredictions:
    model: nn.Module
    meta: ModelMeta
    images: np.ndarray  # uint8 (N,28,28) test images, as shown to people
    x: torch.Tensor  # the same images normalised as the model expects them
    labels: torch.Tensor
    logits: torch.Tensor

    @property
    def probabilities(self) -> torch.Tensor:
        return torch.softmax(self.logits.double(), 1).float()

    @property
    def predicted(self) -> torch.Tensor:
        return self.logits.argmax(1)

    @property
    def accuracy(self) -> float:
        return metrics.accuracy(self.labels, self.predicted)


def predict_run(run_dir: Path, images: np.ndarray, labels: np.ndarray) -> RunPredictions:
    """Load `run_dir`'s checkpoint and score every test image (fp32, with the run's own TTA setting)."""
    model, meta = load_checkpoint(run_dir)
    norm = meta["normalization"]
    x = normalize(torch.from_numpy(images), norm["mean"], norm["std"])
    logits = predict_checkpoint(model, meta, images)
    return RunPredictions(model, meta, images, x, torch.from_numpy(labels).long(), logits)


def random_baseline(meta: ModelMeta, x: torch.Tensor, labels: torch.Tensor, seed: int) -> dict[str, float]:
    """Accuracy and loss of the same architecture with the weights it started training from.

    fit() seeds every generator with the run's seed right before building the model, so
    seeding the same way here rebuilds exactly the untrained network of that run.
    """
    from fmnist.models.registry import create_model, saved_model_args
    from fmnist.seeding import seed_everything

    seed_everything(seed)
    model = create_model(meta["model"], **saved_model_args(meta["model"], meta["model_args"])).eval()
    norm = meta["normalization"]
    logits = predict(model, x, tta=tta_level(meta), blank=blank_value(norm["mean"], norm["std"]))
    return {"accuracy": metrics.accuracy(labels, logits.argmax(1)), "loss": metrics.cross_entropy(logits, labels)}


@torch.no_grad()
def extract_features(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    """`forward_features` embeddings (N,D) in eval mode."""
    was_training = model.training
    model.eval()
    try:
        parts = [model.forward_features(x[i : i + batch_size]).float().cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(parts).numpy() if parts else np.empty((0, 0), np.float32)
