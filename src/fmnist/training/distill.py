"""Distillation: a student trains on a teacher's soft predictions mixed with the labels.

`fmnist distill TEACHER` (or `--teacher TEACHER` on `fmnist train` / `fmnist compare`) names a run
directory or an ensemble directory. Before the first step the teacher scores every image of the
student's training split once; each image's target is then

    distill_weight * teacher probabilities ** (1 / distill_temperature), renormalised,
    + (1 - distill_weight) * its one-hot label,

and the usual cross-entropy (label smoothing included) trains against it, as after mixup. The teacher's
probabilities are the weighted mean of its members' (an ensemble's own rule), each member seeing the
image and its mirror (TEACHER_TTA): the student trains on random mirrors, and two views cost a third
of a member's six flip-shift views.

The teacher must not have trained on the student's validation images, or choosing the best epoch on
them would be choosing on what the teacher has seen: every member's hold-out must contain the
student's (one split seed and size across the runs, as `fmnist ensemble` requires). Its data files
must be the student's. What the teacher cost is recorded apart from the student's training time
(`TeacherRecord` in results.json): its members' training seconds and the seconds scoring took, so a
recipe that distils counts every member.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fmnist.config import TrainConfig
from fmnist.data.dataset import FashionMNIST
from fmnist.data.splits import saved_holdout, stratified_split
from fmnist.errors import CheckpointError, RunPathError, UsageError
from fmnist.inference.ensemble_model import (
    Member,
    average_probabilities,
    ensemble_members,
    is_ensemble_dir,
    load_members,
    member_probabilities,
)
from fmnist.inference.rundir import TeacherRecord, read_config, read_results

# The views each member scores a training image in (fmnist.inference.tta): see the module docstring.
TEACHER_TTA = "flip"


@dataclass
class Teacher:
    folder: Path
    kind: str  # "run" or "ensemble"
    members: list[Member]
    weights: list[float]


def load_teacher(path: str | Path) -> Teacher:
    """A run directory (one member) or an ensemble directory, loaded on the CPU and checked."""
    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(f"teacher {folder}: no such run or ensemble directory")
    if is_ensemble_dir(folder):
        members, manifest = ensemble_members(folder)
        return Teacher(folder, "ensemble", members, [e.weight for e in manifest.members])
    try:
        members = load_members([folder])
    except CheckpointError as exc:
        raise UsageError(f"teacher {folder}: not a run directory with a checkpoint ({exc})") from None
    return Teacher(folder, "run", members, [1.0])


def check_teacher(teacher: Teacher, config: TrainConfig, dataset: FashionMNIST) -> None:
    """Every member trained on the student's data files and held out (at least) the student's validation images."""
    labels = np.asarray(dataset.train_labels)
    _, student_val = stratified_split(labels, config.val_size, config.validation_seed)
    data_sha = dataset.provenance.to_dict()["sha256"]
    for member in teacher.members:
        try:
            results, saved = read_results(member.folder), read_config(member.folder)
        except RunPathError as exc:
            raise UsageError(f"teacher member {member.folder}: {exc}") from None
        if results.data.get("sha256") != data_sha:
            raise UsageError(f"teacher member {member.folder} was trained on other data files than this run's")
        val_size, seed = saved_holdout(saved)
        if not len(student_val):
            continue
        _, member_val = stratified_split(labels, val_size, seed) if val_size else (None, np.empty(0, np.int64))
        if not np.isin(student_val, member_val).all():
            raise UsageError(
                f"teacher member {member.folder} trained on some of this run's validation images "
                f"(it held out {val_size} images by split seed {seed}; this run holds out {config.val_size} by "
                f"split seed {config.validation_seed}): train both with one --split-seed and --val-size"
            )


def soften(probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """p ** (1 / T), renormalised: softmax(logits / T) for one network; T > 1 flattens, T < 1 sharpens."""
    if temperature == 1.0:
        return probabilities
    logp = torch.log(probabilities.double().clamp_min(1e-30)) / temperature
    return torch.softmax(logp, dim=1).float()


def mix_with_labels(teacher_probabilities: torch.Tensor, labels: torch.Tensor, weight: float) -> torch.Tensor:
    """(N,C) targets: `weight` of the teacher's probabilities, the rest the one-hot labels."""
    one_hot = torch.nn.functional.one_hot(labels.long(), teacher_probabilities.shape[1]).float()
    return weight * teacher_probabilities.float() + (1 - weight) * one_hot


def _score(teacher: Teacher, images: np.ndarray) -> torch.Tensor:
    """(N,C) the teacher's mean probabilities for uint8 images, at TEACHER_TTA, in the precision `fmnist evaluate` uses."""
    chosen = [(m, w) for m, w in zip(teacher.members, teacher.weights) if w > 0]  # a greedy pick's weight 0: unused
    probabilities = member_probabilities([m for m, _ in chosen], images, tta=TEACHER_TTA)
    return average_probabilities(probabilities, [w for _, w in chosen])


def _members_train_seconds(teacher: Teacher) -> float:
    """Every member's training time, those an ensemble weighs 0 too: they were trained to choose among."""
    return sum(read_results(m.folder).train_seconds for m in teacher.members)


def teacher_targets(config: TrainConfig, dataset: FashionMNIST, train_idx: np.ndarray,
                    val_idx: np.ndarray) -> tuple[torch.Tensor, TeacherRecord]:  # fmt: skip
    """(N,C) training targets for the images `train_idx` (in that order) and the record of the teacher."""
    started = time.perf_counter()
    teacher = load_teacher(config.teacher)
    check_teacher(teacher, config, dataset)
    labels = torch.from_numpy(np.asarray(dataset.train_labels))
    probabilities = _score(teacher, dataset.train_images[train_idx])
    targets = mix_with_labels(soften(probabilities, config.distill_temperature), labels[train_idx],
                              config.distill_weight)  # fmt: skip
    val_accuracy = None
    if len(val_idx):
        val_probabilities = _score(teacher, dataset.train_images[val_idx])
        val_accuracy = float((val_probabilities.argmax(1) == labels[val_idx]).float().mean())
    record = TeacherRecord(
        path=str(teacher.folder.resolve()), kind=teacher.kind, members=len(teacher.members),
        member_sha256=[m.meta["weights_sha256"] for m in teacher.members], tta=TEACHER_TTA,
        val_accuracy=val_accuracy, members_train_seconds=_members_train_seconds(teacher),
        targets_seconds=time.perf_counter() - started,
    )  # fmt: skip
    return targets, record
