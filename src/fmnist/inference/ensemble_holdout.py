"""Which training images an ensemble's members held out: the split greedy selection chooses on and
the images its trust record (fmnist.inference.ensemble_trust) is fitted on.

Each run holds out `val_size` training images drawn by its split seed (`split_seed`, or its own
seed when that is -1), as its config.toml records. Only the images no member trained on can score
the ensemble honestly: all of a hold-out where the members share it, else the images every
member's hold-out contains.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np

from fmnist.data.splits import saved_holdout, stratified_split
from fmnist.inference.ensemble_model import Member
from fmnist.inference.rundir import CONFIG_FILE

DIFFERENT = "the members held out different validation images"  # shared_holdout's reason, as it begins
# Below this many images no member trained on, the 95% unknown threshold would rest on a handful of them.
MIN_CALIBRATION_IMAGES = 100


def member_holdout(member: Member) -> tuple[int, int] | str:
    """(val_size, hold-out seed) from a member's config.toml, or why it has none to share."""
    path = Path(member.folder) / CONFIG_FILE
    try:
        val_size, seed = saved_holdout(tomllib.loads(path.read_text(encoding="utf-8")))
    except (OSError, tomllib.TOMLDecodeError, TypeError, ValueError):
        return f"{member.folder} has no readable {CONFIG_FILE} to say which images it held out"
    if val_size <= 0:
        return f"{member.folder} held out no validation images"
    return val_size, seed


def member_holdouts(members: list[Member], dataset) -> list[tuple[int, int]] | str:
    """Each member's (val_size, seed) of `dataset`'s training images, or why one has none."""
    train_sha256 = (dataset.provenance.to_dict().get("sha256") or {}).get("train_images")
    holdouts = []
    for m in members:
        holdout = member_holdout(m)
        if isinstance(holdout, str):
            return holdout
        trained_on = (((m.meta.get("extra") or {}).get("data") or {}).get("sha256") or {}).get("train_images")
        if train_sha256 and trained_on and trained_on != train_sha256:
            return f"{m.folder} was trained on other training images than these"
        if holdout[0] >= len(dataset.train_labels):
            return f"val_size {holdout[0]} exceeds these {len(dataset.train_labels)} images"
        holdouts.append(holdout)
    return holdouts


def shared_holdout(members: list[Member], dataset) -> tuple[int, int] | str:
    """The (val_size, seed) every member held out of `dataset`'s training images, or why there is none."""
    holdouts = member_holdouts(members, dataset)
    if isinstance(holdouts, str):
        return holdouts
    if len(set(holdouts)) > 1:
        listed = ", ".join(f"{m.folder.name}: {size} by seed {seed}" for m, (size, seed) in zip(members, holdouts))
        return (f"{DIFFERENT} ({listed}); "
                "train them with one --split-seed to compare them on validation")  # fmt: skip
    return holdouts[0]


def calibration_images(members: list[Member], dataset) -> np.ndarray | str:
    """Sorted indices of `dataset`'s training images that no member trained on (the intersection of
    their hold-outs), or why there are too few to fit on."""
    holdouts = member_holdouts(members, dataset)
    if isinstance(holdouts, str):
        return holdouts
    labels = np.asarray(dataset.train_labels)
    common = None
    for size, seed in sorted(set(holdouts)):
        held = stratified_split(labels, size, seed)[1]
        common = held if common is None else np.intersect1d(common, held)
    common = np.sort(common)
    if len(common) < MIN_CALIBRATION_IMAGES:
        return (f"only {len(common)} training images were held out by every member, fewer than "
                f"{MIN_CALIBRATION_IMAGES} (train them with one --split-seed)")  # fmt: skip
    return common
