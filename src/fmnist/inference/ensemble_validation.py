"""An ensemble scored on its members' shared validation split, so ensembles are chosen without the test set.

Each run holds out `val_size` training images drawn by its split seed (`split_seed`, or its own
seed when that is -1). Only members that held out the same images, from the same training file,
can be averaged on them: any other member trained on some of those images. Train the runs that
an ensemble will compare with one `split_seed`; runs with different hold-outs get a reason
instead of figures.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tomllib
import torch

from fmnist.data.splits import saved_holdout, stratified_split
from fmnist.device import resolve_precision
from fmnist.errors import UsageError
from fmnist.inference.ensemble import Member, member_probabilities, member_weights, members_of, score_members
from fmnist.training.rundirs import CONFIG_FILE


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
