"""Fitting scikit-learn baselines (logistic regression, linear and RBF SVC, random forest).

`fit_baseline(config, dataset, callbacks)` is what `fmnist.training.trainer.fit` calls for a baseline:
same validation split, same test evaluation, same callbacks and `RunResult` as a network,
so `fmnist compare` and the report place these models beside the networks.

Nothing here pickles. A linear baseline's coefficients go into its network form (a Linear
layer on the pixels) and become an ordinary checkpoint; a random forest or RBF SVC has no
such form, and its `RunResult.model` is None (results and metrics only).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fmnist.analysis import metrics
from fmnist.config import TrainConfig
from fmnist.data.dataset import FashionMNIST
from fmnist.data.normalize import normalize
from fmnist.data.splits import stratified_split, stratified_subsample
from fmnist.device import cpu_isa
from fmnist.errors import UsageError
from fmnist.inference.evaluate import evaluate_logits
from fmnist.inference.rundir import ClassicalFit
from fmnist.models.base import Classifier
from fmnist.models.registry import BaselineSpec, create_model, get_entry
from fmnist.seeding import seed_everything
from fmnist.training.results import EpochRecord, RunInfo, RunResult, TrainCallback

# Scoring an SVC costs as much as fitting it: training metrics use at most this many images.
TRAIN_EVAL = 5000


def _features(images: np.ndarray, config: TrainConfig) -> np.ndarray:
    """Flattened pixels, scaled exactly as the networks' inputs (and the checkpoint) expect."""
    return normalize(images, config.input_mean, config.input_std).reshape(len(images), -1).numpy()


def _subset(indices: np.ndarray, labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    if not size or size >= len(indices):
        return indices
    return indices[stratified_subsample(labels[indices], size, seed)]


def _scores(estimator: Any, spec: BaselineSpec, x: np.ndarray) -> torch.Tensor:
    """Per-class scores used as logits: log-probabilities where the model has them."""
    if spec.probabilistic and not spec.linear:
        # A forest's vote shares can be exactly 0; clipping keeps the log-loss finite.
        return torch.from_numpy(np.log(np.clip(estimator.predict_proba(x), 1e-7, 1.0))).float()
    return torch.from_numpy(np.asarray(estimator.decision_function(x))).float()


def _size(estimator: Any) -> tuple[int, float]:
    """(learned numbers, megabytes as stored in memory) for a fitted estimator."""
    if hasattr(estimator, "estimators_"):  # a forest
        trees = [tree.tree_ for tree in estimator.estimators_]
        # Per node: two children, feature, threshold, impurity, two sample counts (+ the class values).
        nodes = sum(t.node_count for t in trees)
        return nodes, (nodes * 56 + sum(t.value.nbytes for t in trees)) / 1e6
    if hasattr(estimator, "support_vectors_"):
        arrays = [estimator.support_vectors_, estimator.dual_coef_, estimator.intercept_]
    else:
        arrays = [estimator.coef_, estimator.intercept_]
    return sum(a.size for a in arrays), sum(a.nbytes for a in arrays) / 1e6


def _network_form(name: str, args: dict[str, Any], estimator: Any) -> Classifier:
    """The linear readout holding a fitted linear estimator's coefficients."""
    model = create_model(name, **args).eval()
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(np.asarray(estimator.coef_, dtype=np.float32)))
        model.head.bias.copy_(torch.from_numpy(np.asarray(estimator.intercept_, dtype=np.float32)))
    return model


def _fit(estimator: Any, x: np.ndarray, y: np.ndarray, iterative: bool) -> tuple[float, bool | None]:
    """Fit; returns (seconds, converged). Forests have no iterations to run out of: None, not True."""
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator.fit(x, y)
    converged = not any("converge" in str(w.message).lower() for w in caught) if iterative else None
    return time.perf_counter() - t0, converged


def fit_baseline(config: TrainConfig, dataset: FashionMNIST, callbacks: Sequence[TrainCallback] = ()) -> RunResult:
    """Fit one scikit-learn baseline; callbacks see one step of one epoch."""
    entry = get_entry(config.model)
    if entry.baseline is None:
        raise UsageError(f"{config.model} is a network, not a scikit-learn baseline")
    spec, args = entry.baseline, dict(config.model_args)
    seed_everything(config.seed)
    train_idx, val_idx = stratified_split(dataset.train_labels, config.val_size, config.validation_seed)
    size = args.get("train_size", 0)
    if config.max_steps:  # smoke mode: as many images as max_steps batches would have seen
        size = min(size or len(train_idx), config.max_steps * config.batch_size)
    fit_idx = _subset(train_idx, dataset.train_labels, size, config.seed)
    x_fit, y_fit = _features(dataset.train_images[fit_idx], config), dataset.train_labels[fit_idx].astype(np.int64)
    if len(np.unique(y_fit)) != 10:
        raise UsageError(f"{config.model}: the training subset must hold all 10 classes (train_size too small?)")
    info = RunInfo(config, total_steps=1, steps_per_epoch=1, step=0, epoch=1, history=(), device="cpu",
                   precision="sklearn", isa=cpu_isa())  # fmt: skip
    for cb in callbacks:
        cb.on_start(info)

    estimator = spec.estimator(**{k: v for k, v in args.items() if k != "num_classes"}, seed=config.seed)
    t0 = time.perf_counter()
    fit_seconds, converged = _fit(estimator, x_fit, y_fit, spec.iterative)

    def scored(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        logits, labels = _scores(estimator, spec, x), torch.from_numpy(y.astype(np.int64))
        return metrics.cross_entropy(logits, labels), metrics.accuracy(labels, logits.argmax(1))

    shown = _subset(np.arange(len(fit_idx)), y_fit, TRAIN_EVAL, config.seed)
    train_loss, train_acc = scored(x_fit[shown], y_fit[shown])
    val_loss = val_acc = None
    if len(val_idx):
        val_loss, val_acc = scored(_features(dataset.train_images[val_idx], config), dataset.train_labels[val_idx])
    test_logits = _scores(estimator, spec, _features(dataset.test_images, config))
    test = evaluate_logits(test_logits, torch.from_numpy(dataset.test_labels))
    elapsed = time.perf_counter() - t0
    record = EpochRecord(epoch=1, train_loss=train_loss, train_accuracy=train_acc, val_loss=val_loss,
                         val_accuracy=val_acc, lr=0.0, steps=1, seconds=elapsed,
                         images_per_second=len(fit_idx) / max(fit_seconds, 1e-9))  # fmt: skip
    for cb in callbacks:
        cb.on_step(1, 1, torch.tensor(train_loss), torch.tensor(train_acc), record.images_per_second)
    model = _network_form(config.model, args, estimator) if spec.linear else None
    params, size_mb = _size(estimator)
    result = RunResult(
        config=config, model=model, history=[record], best_epoch=1, epochs_run=1, steps=1, train_seconds=elapsed,
        test=test, test_logits=test_logits, params=params, size_mb=size_mb, data=dataset.provenance.to_dict(),
        device="cpu", precision="sklearn", isa=info.isa,
        classical=ClassicalFit(
            kind=config.model, library="scikit-learn", estimator=type(estimator).__name__,
            train_images=len(fit_idx), fit_seconds=round(fit_seconds, 3), converged=converged,
            scores="log-probability" if spec.probabilistic else "decision function (not a probability)",
            probabilistic=spec.probabilistic, checkpoint=spec.linear,
        ),
    )  # fmt: skip
    for cb in callbacks:
        cb.on_epoch_end(record, True)
    for cb in callbacks:
        cb.on_end(result)
    return result
