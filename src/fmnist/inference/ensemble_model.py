"""Ensembles of trained runs: average the members' class probabilities.

An ensemble directory holds

    ensemble.json            the manifest: members (paths relative to the folder), weights,
                             each member's weights sha256, the ensemble's input normalisation
    results.json             test metrics like a run's, plus the members, their disagreement
                             and the errors the ensemble fixes or introduces against its best member
    predictions.safetensors  labels, the ensemble's test probabilities and each member's top-1
    trust.json, trust.safetensors
                             its temperature, unknown threshold and conformal scores
                             (fmnist.inference.ensemble_trust)

`EnsembleModel` is one nn.Module over normalised input (the ensemble's mean/std, the same
contract as a single model's ONNX file). Inside, each member gets the input re-normalised to
its own mean/std and runs with its own test-time augmentation; the module returns the log of
the weighted mean probability, so softmax gives the mean back and argmax is the ensemble's
answer. `fmnist.inference.predict.Predictor` and `fmnist.inference.export` take an ensemble directory wherever
they take a run directory. Grad-CAM has no single network to explain, so ensembles have none.

This module loads and runs ensembles; fmnist.inference.ensemble_build makes them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from torch import nn

from fmnist.data.dataset import ProvenanceRecord
from fmnist.errors import CheckpointError, RunPathError, UsageError
from fmnist.fsutil import read_json
from fmnist.inference.checkpoint import (
    ModelMeta,
    Normalization,
    checkpoint_folder,
    load_checkpoint,
    normalization,
    tta_settings,
    with_tta,
)
from fmnist.inference.records import EnsembleManifest, EnsembleResults
from fmnist.inference.rundir import ENSEMBLE_FILE as MANIFEST_FILE
from fmnist.inference.rundir import PREDICTIONS_FILE, RESULTS_FILE
from fmnist.models.base import Classifier

FORMAT = "fmnist-ensemble"
FORMAT_VERSION = 1
MODEL_NAME = "ensemble"
# The floor under an averaged probability before its log: keeps log-probabilities finite.
_TINY = torch.finfo(torch.float32).tiny


@dataclass
class Member:
    folder: Path
    model: nn.Module
    meta: ModelMeta


class MemberInfo(TypedDict):
    model: str
    tta: str
    weight: float


class EnsembleExtra(TypedDict):
    test_accuracy: float | None  # from its results.json (None: it has none)
    data: ProvenanceRecord | None


class EnsembleMeta(TypedDict):
    """What inference knows of a loaded ensemble, under the keys a checkpoint's ModelMeta uses for the same facts."""

    model: str  # MODEL_NAME
    model_args: dict[str, list[str]]  # {"members": each member's model}
    family: str
    class_names: list[str]
    normalization: Normalization
    params: int
    weights_sha256: str  # of what identifies the graph: each member's weights, TTA, normalisation and weight
    members: list[MemberInfo]
    extra: EnsembleExtra


InferenceMeta = ModelMeta | EnsembleMeta  # a run directory's or an ensemble directory's


class EnsembleModel(nn.Module):
    """Weighted mean of the members' softmax probabilities; returns its log (N, classes).

    `mean`/`std` are the normalisation of the input this module receives; a member trained with
    other values gets the input mapped to its own (pixel/255 is recovered exactly, up to rounding).
    """

    def __init__(self, members: list[Member], weights: list[float], mean: float, std: float):
        super().__init__()
        if len(members) != len(weights) or not members:
            raise ValueError("an ensemble needs one weight per member and at least one member")
        self.members = nn.ModuleList(with_tta(m.model, m.meta) for m in members)
        self.weights = [float(w) for w in weights]
        self.rescale = []  # (scale, offset): member input = input * scale + offset
        for m in members:
            member_mean, member_std = normalization(m.meta)
            self.rescale.append((std / member_std, (mean - member_mean) / member_std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for member, (scale, offset), weight in zip(self.members, self.rescale, self.weights):
            xm = x if (scale, offset) == (1.0, 0.0) else x * scale + offset
            if isinstance(member.model, Classifier):
                xm = member.model.layout(xm)
            p = torch.softmax(member(xm).float(), dim=1) * weight
            total = p if total is None else total + p
        return log_probabilities(total)


def log_probabilities(probabilities: torch.Tensor) -> torch.Tensor:
    """log p, floored so a probability of exactly 0 stays finite (softmax gives p back)."""
    return torch.log(probabilities.clamp_min(_TINY))


def average_probabilities(probabilities: torch.Tensor, weights: list[float] | None = None) -> torch.Tensor:
    """(members, N, classes) probabilities -> (N, classes) weighted mean (equal weights by default)."""
    m = probabilities.shape[0]
    w = torch.ones(m, dtype=torch.float64) if weights is None else torch.tensor(weights, dtype=torch.float64)
    return (probabilities.double() * (w / w.sum())[:, None, None]).sum(0).float()


# -- members and manifest ----------------------------------------------------------------------------


def load_members(folders: list[Path], device: str | torch.device = "cpu") -> list[Member]:
    members: list[Member] = []
    for path in folders:
        try:
            folder = checkpoint_folder(path)
            model, meta = load_checkpoint(folder, device)
        except CheckpointError as exc:  # its message names the member's folder
            raise CheckpointError(f"ensemble member {exc}") from None
        members.append(Member(folder, model, meta))
    first = members[0].meta["class_names"]
    for m in members[1:]:
        if m.meta["class_names"] != first:
            raise UsageError(f"ensemble members must share class names: {m.folder} differs from {members[0].folder}")
    seen: dict[str, Path] = {}
    for m in members:
        sha = m.meta["weights_sha256"]
        if sha in seen:
            raise UsageError(f"{m.folder} has the same weights as {seen[sha]}: an ensemble needs different members")
        seen[sha] = m.folder
    return members


def members_of(run_dirs: list[Path], device: str | torch.device = "cpu") -> list[Member]:
    """The members of a new ensemble: two or more run directories, loaded and checked."""
    if len(run_dirs) < 2:
        raise UsageError("an ensemble needs at least two run directories")
    return load_members([Path(d) for d in run_dirs], device)


def is_ensemble_dir(path: Path) -> bool:
    return (Path(path) / MANIFEST_FILE).is_file()


def _read_manifest(folder: Path) -> EnsembleManifest:
    path = folder / MANIFEST_FILE
    raw = read_json(path)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an fmnist ensemble manifest (missing format marker)")
    version = raw.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(f"{path}: ensemble format version {version!r} is not one this fmnist reads")
    members, norm = raw.get("members"), raw.get("normalization")
    ok = isinstance(members, list) and members and isinstance(norm, dict) and all(
        isinstance(m, dict) and isinstance(m.get("path"), str) and isinstance(m.get("weights_sha256"), str)
        and isinstance(m.get("weight"), (int, float)) and m["weight"] > 0 for m in members
    ) and all(isinstance(norm.get(k), (int, float)) for k in ("mean", "std")) and norm["std"] > 0  # fmt: skip
    if not ok:
        raise CheckpointError(f"{path}: members or normalization missing or malformed")
    try:
        return EnsembleManifest.from_json(raw, path)
    except RunPathError as exc:  # a key a manifest always has is missing
        raise CheckpointError(str(exc)) from None


def ensemble_members(path: Path, device: str | torch.device = "cpu") -> tuple[list[Member], EnsembleManifest]:
    """(the members, loaded, in the manifest's order; the manifest) of an ensemble directory, each member
    checked against the manifest."""
    folder = Path(path)
    manifest = _read_manifest(folder)
    members = load_members([folder / e.path for e in manifest.members], device)
    for member, entry in zip(members, manifest.members):
        if member.meta["weights_sha256"] != entry.weights_sha256:
            raise CheckpointError(f"ensemble member {member.folder} has other weights than when the ensemble was built")
    if members[0].meta["class_names"] != manifest.class_names:
        raise CheckpointError(f"{folder / MANIFEST_FILE}: class names differ from the members'")
    return members, manifest


def load_ensemble(path: Path, device: str | torch.device = "cpu") -> tuple[EnsembleModel, EnsembleMeta]:
    """(EnsembleModel in eval mode, metadata) for an ensemble directory, members checked against the manifest."""
    folder = Path(path)
    members, manifest = ensemble_members(folder, device)
    entries = manifest.members
    mean, std = float(manifest.normalization["mean"]), float(manifest.normalization["std"])
    model = EnsembleModel(members, [e.weight for e in entries], mean, std).eval()
    pairs = list(zip(members, entries))
    described = [MemberInfo(model=m.meta["model"], tta=m.meta["tta"], weight=e.weight) for m, e in pairs]
    # What identifies the graph: each member's weights, TTA and normalisation, and the weight given it.
    identity = [[m.meta["weights_sha256"], m.meta["tta"], normalization(m.meta), e.weight] for m, e in pairs]
    results = _read_ensemble_results(folder)
    meta: EnsembleMeta = {
        "model": MODEL_NAME,
        "model_args": {"members": [m.meta["model"] for m in members]},
        "family": MODEL_NAME,
        "class_names": manifest.class_names,
        "normalization": {"mean": mean, "std": std},
        "params": sum(int(m.meta.get("params") or 0) for m in members),
        "weights_sha256": hashlib.sha256(json.dumps([identity, mean, std]).encode()).hexdigest(),
        "members": described,
        "extra": {
            "test_accuracy": results.test_accuracy if results else None,
            "data": results.data if results else None,
        },
    }
    return model, meta


def _read_ensemble_results(folder: Path) -> EnsembleResults | None:
    """An ensemble directory's results.json, or None when it has none (or not one this fmnist reads)."""
    path = folder / RESULTS_FILE
    try:
        return EnsembleResults.read(path) if path.is_file() else None
    except RunPathError:
        return None


def load_inference_model(path: Path, device: str | torch.device = "cpu") -> tuple[Path, nn.Module, InferenceMeta]:
    """(folder, model, metadata) for a run directory or an ensemble directory."""
    path = Path(path)
    if path.is_dir() and is_ensemble_dir(path):
        model, meta = load_ensemble(path, device)
        return path, model, meta
    folder = checkpoint_folder(path)
    model, meta = load_checkpoint(folder, device)
    return folder, model, meta


def tta_summary(meta: InferenceMeta) -> str:
    """A checkpoint's TTA level, or each member's for an ensemble (the graph applies them all)."""
    if "members" in meta:
        return "per member: " + ", ".join(f"{m['model']} {m['tta']}" for m in meta["members"])
    return tta_settings(meta)["tta"]


# -- building ----------------------------------------------------------------------------------------


def member_probabilities(members: list[Member], images: np.ndarray, precision: str = "auto",
                         step: Callable[[str], None] = lambda _: None, tta: str | None = None) -> torch.Tensor:  # fmt: skip
    """(members, N, classes): each member on its own normalisation and TTA, as `fmnist evaluate` runs it.

    `tta` scores every member at that level instead of its own (benchmarks/ensemble_tta.py).
    """
    from fmnist.data.normalize import normalize
    from fmnist.inference.evaluate import predict

    out = []
    for i, m in enumerate(members, 1):
        step(f"scoring member {i}/{len(members)}: {m.folder.name}")
        x = normalize(images, *normalization(m.meta))
        settings = tta_settings(m.meta)
        if tta is not None:
            settings["tta"] = tta
        logits = predict(m.model, x, precision=precision, **settings)
        out.append(torch.softmax(logits.float(), dim=1))
    return torch.stack(out)


def read_predictions(folder: Path) -> dict[str, np.ndarray]:
    """An ensemble's saved test predictions: labels (N,), probabilities (N,C), member_predicted (M,N)."""
    from safetensors.numpy import load_file

    path = Path(folder) / PREDICTIONS_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {PREDICTIONS_FILE} (not an ensemble directory)")
    return load_file(str(path))
