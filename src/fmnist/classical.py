"""Classical baselines with scikit-learn: logistic regression, linear and RBF SVC, random forest.

`fit_classical(config, dataset, callbacks)` mirrors fmnist.train.fit: same validation split,
same test evaluation, same RunResult, so `fmnist compare` and the report place these models
beside the networks (the Fashion-MNIST paper's benchmark: logistic regression ~84%, SVC ~89.7%).

Nothing here pickles. Logistic regression and linear SVC are linear maps of the pixels, so
their coefficients become an ordinary fmnist checkpoint (safetensors + model.json); a random
forest or RBF SVC leaves results.json and metrics.jsonl only.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from fmnist import metrics
from fmnist.config import TrainConfig
from fmnist.data.dataset import FashionMNIST
from fmnist.data.loader import stratified_split
from fmnist.errors import UsageError
from fmnist.evaluate import evaluate_logits
from fmnist.fsutil import atomic_write_json
from fmnist.models.classical import CLASSICAL_MODELS, LINEAR_MODELS
from fmnist.models.registry import create_model, get_entry
from fmnist.train import EpochRecord, RunResult, TrainCallback, fit, seed_everything

TRAIN_EVAL = 5000
# The Fashion-MNIST paper's benchmark (Xiao et al. 2017) for the baselines it names, best settings.
PAPER_BENCHMARK = {"logreg": 0.842, "rbf_svc": 0.897}
__all__ = ["CLASSICAL_MODELS", "fit_any", "fit_classical", "is_classical"]


def is_classical(model_name: str) -> bool:
    try:
        return get_entry(model_name).family == "classical"
    except UsageError:
        return False


def fit_any(
    config: TrainConfig, dataset: FashionMNIST | None = None, callbacks: Sequence[TrainCallback] = ()
) -> RunResult:
    """fit() for networks, fit_classical() for scikit-learn models: one call for the CLI."""
    return (fit_classical if is_classical(config.model) else fit)(config, dataset, callbacks)


def _features(images: np.ndarray, config: TrainConfig) -> np.ndarray:
    """Flattened pixels, scaled exactly as the networks' inputs (and the checkpoint) expect."""
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return (x - np.float32(config.input_mean)) / np.float32(config.input_std)


def _subset(train_idx: np.ndarray, labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    if not size or size >= len(train_idx):
        return train_idx
    from fmnist.analysis.embeddings import stratified_subsample

    return train_idx[stratified_subsample(labels[train_idx], size, seed)]


def _estimator(name: str, args: dict[str, Any], seed: int):
    if name == "logreg":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=args["C"], max_iter=args["max_iter"], random_state=seed)
    if name == "linear_svc":
        from sklearn.svm import LinearSVC

        return LinearSVC(C=args["C"], max_iter=args["max_iter"], dual="auto", random_state=seed)
    if name == "rbf_svc":
        from sklearn.svm import SVC

        gamma = args["gamma"] if args["gamma"] in ("scale", "auto") else float(args["gamma"])
        return SVC(C=args["C"], kernel="rbf", gamma=gamma, decision_function_shape="ovr", random_state=seed)
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=args["n_estimators"], max_depth=args["max_depth"] or None,
                                  n_jobs=max(1, torch.get_num_threads()), random_state=seed)  # fmt: skip


def _scores(estimator, x: np.ndarray) -> torch.Tensor:
    """Per-class scores used as logits: log-probabilities where the model has them."""
    if hasattr(estimator, "predict_proba") and not hasattr(estimator, "decision_function"):
        # A forest's vote shares can be exactly 0; clipping keeps the log-loss finite.
        return torch.from_numpy(np.log(np.clip(estimator.predict_proba(x), 1e-7, 1.0))).float()
    return torch.from_numpy(np.asarray(estimator.decision_function(x))).float()


def _size(name: str, estimator) -> tuple[int, float]:
    """(learned numbers, megabytes as stored in memory) for a fitted estimator."""
    if name in LINEAR_MODELS:
        arrays = [estimator.coef_, estimator.intercept_]
    elif name == "rbf_svc":
        arrays = [estimator.support_vectors_, estimator.dual_coef_, estimator.intercept_]
    else:
        trees = [tree.tree_ for tree in estimator.estimators_]
        # Per node: two children, feature, threshold, impurity, two sample counts (+ the class values).
        nodes = sum(t.node_count for t in trees)
        return nodes, (nodes * 56 + sum(t.value.nbytes for t in trees)) / 1e6
    return sum(a.size for a in arrays), sum(a.nbytes for a in arrays) / 1e6


def fit_classical(
    config: TrainConfig, dataset: FashionMNIST | None = None, callbacks: Sequence[TrainCallback] = ()
) -> RunResult:
    """Fit one scikit-learn model; the run directory (via RunDirWriter) looks like a network's."""
    from fmnist.runs import RESULTS_FILE, RunDirWriter

    config.validate()
    if not is_classical(config.model):
        raise UsageError(f"{config.model} is not a classical model ({', '.join(CLASSICAL_MODELS)})")
    if dataset is None:
        from fmnist.data.sources import resolve_dataset

        dataset = resolve_dataset(config.data_dir or None)
    seed_everything(config.seed)
    args = dict(config.model_args)
    train_idx, val_idx = stratified_split(dataset.train_labels, config.val_size, config.seed)
    size = args.get("train_size", 0)
    if config.max_steps:  # smoke mode: as many images as max_steps batches would have seen
        size = min(size or len(train_idx), config.max_steps * config.batch_size)
    fit_idx = _subset(train_idx, dataset.train_labels, size, config.seed)
    x_fit, y_fit = _features(dataset.train_images[fit_idx], config), dataset.train_labels[fit_idx].astype(np.int64)
    if len(np.unique(y_fit)) != 10:
        raise UsageError(f"{config.model}: the training subset must hold all 10 classes (train_size too small?)")
    model = create_model(config.model, **args).eval()
    run = SimpleNamespace(config=config, dataset=dataset, model=model, history=[], device=torch.device("cpu"),
                          precision="sklearn", steps_per_epoch=1, total_steps=1, step=0, epoch=1)  # fmt: skip
    for cb in callbacks:
        cb.on_start(run)  # what a Trainer shows its callbacks: one fit counts as one step of one epoch

    estimator = _estimator(config.model, args, config.seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator.fit(x_fit, y_fit)
    fit_seconds = time.perf_counter() - t0
    # Forests have no iterations to run out of: None rather than a vacuous True.
    iterative = config.model != "random_forest"
    converged = not any("converge" in str(w.message).lower() for w in caught) if iterative else None

    def evaluate(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, float, float]:
        logits, labels = _scores(estimator, x), torch.from_numpy(y.astype(np.int64))
        return logits, metrics.cross_entropy(logits, labels), metrics.accuracy(labels, logits.argmax(1))

    # Scoring an SVC costs as much as fitting it: training metrics use at most TRAIN_EVAL images.
    shown = _subset(np.arange(len(fit_idx)), y_fit, TRAIN_EVAL, config.seed)
    _, train_loss, train_acc = evaluate(x_fit[shown], y_fit[shown])
    val_loss = val_acc = None
    if len(val_idx):
        _, val_loss, val_acc = evaluate(_features(dataset.train_images[val_idx], config), dataset.train_labels[val_idx])
    test_logits = _scores(estimator, _features(dataset.test_images, config))
    test = evaluate_logits(test_logits, torch.from_numpy(dataset.test_labels))
    elapsed = time.perf_counter() - t0
    record = EpochRecord(epoch=1, train_loss=train_loss, train_accuracy=train_acc, val_loss=val_loss,
                         val_accuracy=val_acc, lr=0.0, steps=1, seconds=elapsed,
                         images_per_second=len(fit_idx) / max(fit_seconds, 1e-9))  # fmt: skip
    linear = config.model in LINEAR_MODELS
    if linear:
        with torch.no_grad():
            model.head.weight.copy_(torch.from_numpy(np.asarray(estimator.coef_, dtype=np.float32)))
            model.head.bias.copy_(torch.from_numpy(np.asarray(estimator.intercept_, dtype=np.float32)))
    params, size_mb = _size(config.model, estimator)
    probabilistic = config.model in ("logreg", "random_forest")
    info = {
        "kind": config.model,
        "library": "scikit-learn",
        "estimator": type(estimator).__name__,
        "train_images": len(fit_idx),
        "fit_seconds": round(fit_seconds, 3),
        "converged": converged,
        "scores": "log-probability" if probabilistic else "decision function (not a probability)",
        "probabilistic": probabilistic,
        "checkpoint": linear,
    }
    result = RunResult(
        config=config, model=model, history=[record], best_epoch=1, epochs_run=1, steps=1,
        train_seconds=elapsed, test=test, test_logits=test_logits, params=params, size_mb=size_mb,
        data=dataset.provenance.to_dict(), device="cpu", precision="sklearn",
        extra={"classical": info},
    )  # fmt: skip
    for cb in callbacks:
        cb.on_epoch_end(record, model, True)
    for cb in callbacks:
        if isinstance(cb, RunDirWriter) and not linear:
            # No torch form to checkpoint: results and metrics only.
            atomic_write_json(cb.run_dir / RESULTS_FILE, result.summary())
        else:
            cb.on_end(result)
    return result
