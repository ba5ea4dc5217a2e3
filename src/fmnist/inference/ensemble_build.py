"""Building an ensemble directory from run directories, and scoring it on validation.

Members are loaded and run by fmnist.inference.ensemble_model; here they are weighted, scored
on the test split once and written out, and scored on the validation split they share (the
images none of them trained on), which is where an ensemble is chosen.

Each run holds out `val_size` training images drawn by its split seed (`split_seed`, or its own
seed when that is -1). Only members that held out the same images, from the same training file,
can be averaged on them: any other member trained on some of those images. Train the runs that
an ensemble will compare with one `split_seed`; runs with different hold-outs get a reason
instead of figures.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tomllib
import torch
from safetensors.torch import save as save_safetensors_bytes

from fmnist import __version__
from fmnist.analysis.calibration import DEFAULT_BINS, calibration
from fmnist.data.splits import saved_holdout, stratified_split
from fmnist.device import resolve_precision
from fmnist.errors import UsageError
from fmnist.fsutil import atomic_write_bytes, atomic_write_json
from fmnist.inference.checkpoint import normalization
from fmnist.inference.ensemble_model import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    MODEL_NAME,
    PREDICTIONS_FILE,
    Member,
    average_probabilities,
    log_probabilities,
    member_probabilities,
    members_of,
)
from fmnist.inference.evaluate import evaluate_logits
from fmnist.inference.rundir import CONFIG_FILE, RESULTS_FILE, prepare_run_dir, read_results


def member_weights(members: list[Member], weighted: bool) -> list[float]:
    """Equal weights, or each member's best validation accuracy, normalised to sum to 1."""
    if not weighted:
        return [1.0 / len(members)] * len(members)
    raw = []
    for m in members:
        value = read_results(m.folder).get("best_val_accuracy")
        if not isinstance(value, (int, float)) or not value > 0:
            raise UsageError(f"{m.folder}: no best validation accuracy to weight by (trained without validation?)")
        raw.append(float(value))
    return [v / sum(raw) for v in raw]


def _relative(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), start.resolve())
    except ValueError:  # another drive (Windows): only an absolute path reaches it
        return str(path.resolve())


def _manifest(members: list[Member], weights: list[float], out_dir: Path, weighted: bool) -> dict[str, Any]:
    mean, std = normalization(members[0].meta)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fmnist_version": __version__,
        "weighted": weighted,
        "class_names": list(members[0].meta["class_names"]),
        "normalization": {"mean": mean, "std": std},
        "members": [
            {"path": _relative(m.folder, out_dir), "model": m.meta["model"], "weights_sha256": m.meta["weights_sha256"],
             "weight": w, "tta": m.meta["tta"]}
            for m, w in zip(members, weights)
        ],  # fmt: skip
    }


def score_members(
    member_probs: torch.Tensor, weights: list[float], labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[float], int]:
    """(weighted mean probabilities (N, C), each member's top-1 (M, N), each member's accuracy, the best's index)."""
    predicted = member_probs.argmax(2)
    accuracy = [(p == labels).double().mean().item() for p in predicted]
    return average_probabilities(member_probs, weights), predicted, accuracy, int(np.argmax(accuracy))


def _pairwise_disagreement(predicted: torch.Tensor) -> list[dict[str, Any]]:
    m = predicted.shape[0]
    return [
        {"a": i, "b": j, "fraction": (predicted[i] != predicted[j]).double().mean().item()}
        for i in range(m)
        for j in range(i + 1, m)
    ]


def build_ensemble(
    run_dirs: list[Path],
    out_dir: Path,
    *,
    dataset,
    weighted: bool = False,
    precision: str = "auto",
    device: str = "cpu",
    overwrite: bool = False,
    step: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Score the members and their average on `dataset`'s test split; write the ensemble directory.

    Returns what results.json holds. Members must share class names; each is run with its own
    normalisation and TTA. `weighted` weights each by its best validation accuracy. `step`
    hears a label before each member is scored (for a progress display).
    """
    members = members_of(run_dirs, device)
    out_dir = Path(out_dir)
    if any(out_dir.resolve() == m.folder.resolve() for m in members):
        raise UsageError(f"{out_dir}: is a member's run directory; choose another --out")
    weights = member_weights(members, weighted)
    prepare_run_dir(out_dir, overwrite=overwrite)

    precision = resolve_precision(precision, torch.device(device))
    labels = torch.from_numpy(dataset.test_labels.astype(np.int64))
    member_probs = member_probabilities(members, dataset.test_images, precision, step)
    probs, member_predicted, member_accuracy, best = score_members(member_probs, weights, labels)
    class_names = tuple(members[0].meta["class_names"])
    evaluation = evaluate_logits(log_probabilities(probs), labels, class_names)
    ensemble_right, best_right = probs.argmax(1) == labels, member_predicted[best] == labels
    cal = calibration(probs, labels, DEFAULT_BINS)
    validation = score_validation(members, weights, dataset, precision, step)

    results = {
        "model": MODEL_NAME,
        "model_args": {"members": [m.meta["model"] for m in members], "weighted": weighted},
        "params": sum(int(m.meta.get("params") or 0) for m in members),
        "test_accuracy": evaluation.accuracy,
        "test_loss": evaluation.loss,
        "ece": cal.ece,
        "mean_confidence": cal.mean_confidence,
        "members": [
            {"run_dir": str(m.folder), "model": m.meta["model"], "tta": m.meta["tta"], "test_accuracy": acc,
             "weight": w}
            for m, acc, w in zip(members, member_accuracy, weights)
        ],
        "best_member": best,
        "gain_over_best_member": evaluation.accuracy - member_accuracy[best],
        "fixed": int((ensemble_right & ~best_right).sum()),  # the best member wrong, the ensemble right
        "introduced": int((~ensemble_right & best_right).sum()),
        "pairwise_disagreement": _pairwise_disagreement(member_predicted),
        "validation": validation,  # the same members on their shared validation split (score_validation below)
        "device": device,
        "precision": precision,
        "data": dataset.provenance.to_dict(),
        "num_images": evaluation.num_images,
        "confusion": evaluation.confusion,
        "per_class": evaluation.per_class,
        "most_confused": evaluation.most_confused,
    }
    tensors = {"labels": labels, "probabilities": probs.contiguous(), "member_predicted": member_predicted.contiguous()}
    atomic_write_bytes(out_dir / PREDICTIONS_FILE, save_safetensors_bytes(tensors))
    atomic_write_json(out_dir / MANIFEST_FILE, _manifest(members, weights, out_dir, weighted))
    atomic_write_json(out_dir / RESULTS_FILE, results)
    return results


def _holdout(member: Member) -> tuple[int, int] | str:
    """(val_size, hold-out seed) from a member's config.toml, or why it has none to share."""
    path = Path(member.folder) / CONFIG_FILE
    try:
        val_size, seed = saved_holdout(tomllib.loads(path.read_text(encoding="utf-8")))
    except (OSError, tomllib.TOMLDecodeError, TypeError, ValueError):
        return f"{member.folder} has no readable {CONFIG_FILE} to say which images it held out"
    if val_size <= 0:
        return f"{member.folder} held out no validation images"
    return val_size, seed


def shared_holdout(members: list[Member], train_sha256: str | None) -> tuple[int, int] | str:
    """The (val_size, seed) every member held out of `train_sha256`'s images, or why there is none."""
    holdouts = []
    for m in members:
        holdout = _holdout(m)
        if isinstance(holdout, str):
            return holdout
        trained_on = (((m.meta.get("extra") or {}).get("data") or {}).get("sha256") or {}).get("train_images")
        if train_sha256 and trained_on and trained_on != train_sha256:
            return f"{m.folder} was trained on other training images than these"
        holdouts.append(holdout)
    if len(set(holdouts)) > 1:
        listed = ", ".join(f"{m.folder.name}: {size} by seed {seed}" for m, (size, seed) in zip(members, holdouts))
        return (f"the members held out different validation images ({listed}); "
                "train them with one --split-seed to compare them on validation")  # fmt: skip
    return holdouts[0]


def score_validation(
    members: list[Member],
    weights: list[float],
    dataset,
    precision: str = "auto",
    step: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Members and their weighted average on the members' shared validation split.

    {"shared": True, "val_size", "split_seed", "accuracy", "members": [accuracy, ...], "best_member",
    "gain_over_best_member"}, or {"shared": False, "reason": "..."} when the hold-outs differ.
    Each member runs with its own normalisation and TTA, as on the test set.
    """
    train_sha = (dataset.provenance.to_dict().get("sha256") or {}).get("train_images")
    holdout = shared_holdout(members, train_sha)
    if isinstance(holdout, str):
        return {"shared": False, "reason": holdout}
    val_size, seed = holdout
    if val_size >= len(dataset.train_labels):
        return {"shared": False, "reason": f"val_size {val_size} exceeds these {len(dataset.train_labels)} images"}
    _, val_idx = stratified_split(dataset.train_labels, val_size, seed)
    labels = torch.from_numpy(dataset.train_labels[val_idx].astype(np.int64))
    member_probs = member_probabilities(members, dataset.train_images[val_idx], precision,
                                        lambda label: step(f"validation: {label}"))  # fmt: skip
    probs, _, member_accuracy, best = score_members(member_probs, weights, labels)
    accuracy = (probs.argmax(1) == labels).double().mean().item()
    return {
        "shared": True,
        "val_size": val_size,
        "split_seed": seed,
        "accuracy": accuracy,
        "members": member_accuracy,
        "best_member": best,
        "gain_over_best_member": accuracy - member_accuracy[best],
    }


def validate_ensemble(
    run_dirs: list[Path],
    *,
    dataset,
    weighted: bool = False,
    precision: str = "auto",
    device: str = "cpu",
    step: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Score an ensemble of `run_dirs` on their shared validation split only: nothing is scored on the test set.

    What `score_validation` returns, plus "run_dirs" and "weights". A UsageError says why when
    the members held out different images, since then there is nothing to report.
    """
    members = members_of(run_dirs, device)
    weights = member_weights(members, weighted)
    scores = score_validation(members, weights, dataset, resolve_precision(precision, torch.device(device)), step)
    if not scores["shared"]:
        raise UsageError(scores["reason"])
    return {**scores, "run_dirs": [str(m.folder) for m in members], "weights": weights}
