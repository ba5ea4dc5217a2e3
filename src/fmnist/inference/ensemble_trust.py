"""An ensemble's own trust record: its temperature, "unknown" threshold and prediction sets.

Fitted when an ensemble is built (fmnist.inference.ensemble_build, both `fmnist ensemble` and
`compare --ensemble`) or later by `fmnist calibrate ENSEMBLE_DIR`, and written with the same
TrustFile (trust.json, trust.safetensors) into the ensemble directory. It is fitted on the images
no member trained on (fmnist.inference.ensemble_holdout: the members' shared hold-out, else the
intersection of theirs), and the members' training images outside them for the Mahalanobis fit.

- The temperature divides the ensemble's logits, the log of its weighted mean probability, so the
  calibrated answer is softmax(log p / T) and the predicted class never changes.
- The OOD score is the single runs' OOD_METHOD, energy plus Mahalanobis distance. The log of a
  mean probability has energy 0 whatever the image, so the energy is the members' weighted mean
  energy, and the Mahalanobis distance is taken on the members' penultimate features side by
  side: benchmarks/ensemble_ood.py measured that pair against the members' energy alone and
  other combinations. Both travel as the ensemble's `features`: the members' features, then the
  energy as one last column (TrustFile.energy_source "features").
- The conformal scores are the calibrated probabilities' LAC scores, as for a run.

An ensemble directory without the files (built before this module) loads as temperature 1 with
ENSEMBLE_NO_TRUST_NOTE.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fmnist.constants import EVAL_BATCH_SIZE
from fmnist.data.normalize import normalize
from fmnist.data.splits import stratified_subsample
from fmnist.device import autocast_context
from fmnist.inference.checkpoint import normalization, tta_settings
from fmnist.inference.ensemble_holdout import calibration_images, shared_holdout
from fmnist.inference.ensemble_model import EnsembleModel, Member, ensemble_members, log_probabilities
from fmnist.inference.trust import TRAIN_SAMPLE, CalibratedNetwork, Trust, TrustFile, embed, fit_record
from fmnist.models.base import Classifier

UNCALIBRATED = "probabilities are uncalibrated, with no unknown answer or sets"
ENSEMBLE_NO_TRUST_NOTE = (
    f"this ensemble predates calibration: {UNCALIBRATED}; rebuild it or run `fmnist calibrate ENSEMBLE_DIR`"
)


def has_features(model: EnsembleModel) -> bool:
    """Whether every member is a network with penultimate features (what the OOD score needs)."""
    return all(isinstance(tta.model, Classifier) for tta in model.members)


class CalibratedEnsemble(nn.Module):
    """An ensemble as its ONNX export and `embed_ensemble` run it: (log mean probability / T, features),
    the features each member's penultimate features (over its TTA views, as `CalibratedNetwork`), side by
    side, then the members' weighted mean energy as one column. softmax of the first output is
    `Trust.probabilities` of `EnsembleModel`'s output."""

    def __init__(self, ensemble: EnsembleModel, temperature: float = 1.0):
        super().__init__()
        self.networks = nn.ModuleList(CalibratedNetwork(t.model, t.level, t.fill, 1.0) for t in ensemble.members)
        self.rescale, self.weights = list(ensemble.rescale), list(ensemble.weights)
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total, energy, features = None, None, []
        share = sum(self.weights)
        for net, (scale, offset), weight in zip(self.networks, self.rescale, self.weights):
            xm = x if (scale, offset) == (1.0, 0.0) else x * scale + offset
            z, f = net(net.model.layout(xm))
            p = torch.softmax(z, dim=1) * weight  # as EnsembleModel averages
            e = -torch.logsumexp(z, dim=1) * (weight / share)
            total, energy = (p, e) if total is None else (total + p, energy + e)
            features.append(f)
        return log_probabilities(total) / self.temperature, torch.cat([*features, energy[:, None]], dim=1)


@torch.no_grad()
def embed_ensemble(model: EnsembleModel, images: np.ndarray, *, mean: float, std: float, precision: str = "fp32",
                   batch_size: int = EVAL_BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """float32 (logits, features) of uint8 (N,28,28) images, as `CalibratedEnsemble` (T = 1) gives them;
    `mean`/`std` are the ensemble's normalisation."""
    from fmnist.inference.evaluate import model_device

    net, device = CalibratedEnsemble(model).eval(), model_device(model)
    x = normalize(images, mean, std)
    logits, features = [], []
    for start in range(0, len(x), batch_size):
        with autocast_context(device, precision):
            z, f = net(x[start : start + batch_size].to(device))
        logits.append(z.float().cpu().numpy())
        features.append(f.float().cpu().numpy())
    if not logits:
        width = sum(int(getattr(t.model, "embedding_dim", 0)) for t in model.members) + 1
        classes = int(getattr(model.members[0].model, "num_classes", 10))
        return np.empty((0, classes), np.float32), np.empty((0, width), np.float32)
    return np.concatenate(logits), np.concatenate(features)


def fit_ensemble_trust(model: EnsembleModel, members: list[Member], dataset, *, mean: float, std: float
                       ) -> tuple[TrustFile, str]:  # fmt: skip
    """(the record, a line for the user or "") fitted on the images none of `members` (the ensemble's,
    in `model`'s order) trained on, in fp32. Where there are none, the record says why and holds T = 1."""
    started = time.perf_counter()
    held = calibration_images(members, dataset)
    if isinstance(held, str):
        note = f"this ensemble cannot be calibrated: {held}; {UNCALIBRATED}"
        return TrustFile(note=note, fit_seconds=time.perf_counter() - started), f"note: {note}"
    labels = np.asarray(dataset.train_labels)
    rest = np.setdiff1d(np.arange(len(labels)), held)
    sample = rest[stratified_subsample(labels[rest], TRAIN_SAMPLE)]
    val_logits, val_features = embed_ensemble(model, dataset.train_images[held], mean=mean, std=std)
    train_features = None
    if has_features(model):
        train_features = embed_ensemble(model, dataset.train_images[sample], mean=mean, std=std)[1]
    else:
        val_features = None
    record = fit_record(val_logits, labels[held], val_features, train_features, labels[sample], "features")
    record.fit_seconds = time.perf_counter() - started
    if isinstance(shared_holdout(members, dataset), str):
        return record, (f"note: calibrated on the {len(held):,} training images every member held out "
                        "(their hold-outs differ)")  # fmt: skip
    return record, ""


def calibrate_ensemble(folder: Path, dataset) -> TrustFile:
    """Fit and write the record of an ensemble directory (`fmnist calibrate ENSEMBLE_DIR`)."""
    members, manifest = ensemble_members(folder)
    mean, std = float(manifest.normalization["mean"]), float(manifest.normalization["std"])
    model = EnsembleModel(members, [e.weight for e in manifest.members], mean, std).eval()
    record, _ = fit_ensemble_trust(model, members, dataset, mean=mean, std=std)
    record.write(folder)
    return record


def load_ensemble_trust(folder: Path) -> Trust:
    """The ensemble directory's Trust: its record, or temperature 1 with ENSEMBLE_NO_TRUST_NOTE."""
    return Trust.load(folder, missing_note=ENSEMBLE_NO_TRUST_NOTE)


def calibrated_module(model: nn.Module, meta, temperature: float) -> nn.Module | None:
    """What an ONNX export of a run or ensemble runs: (logits / T, features), `CalibratedNetwork` or
    `CalibratedEnsemble`; None for a model without penultimate features."""
    if "members" in meta:
        return CalibratedEnsemble(model, temperature).eval() if has_features(model) else None
    if not hasattr(model, "forward_features"):
        return None
    settings = tta_settings(meta)
    return CalibratedNetwork(model, settings["tta"], settings["blank"], temperature).eval()


def temperature_and_features(folder: Path, model: nn.Module, meta, images: np.ndarray) -> tuple[float, np.ndarray]:
    """(the temperature, fp32 features of uint8 `images`) of a run or ensemble directory: what its
    `calibrated_module` divides by and outputs (1 without a trust record)."""
    mean, std = normalization(meta)
    if "members" in meta:
        return load_ensemble_trust(folder).temperature, embed_ensemble(model, images, mean=mean, std=std)[1]
    features = embed(model, images, mean=mean, std=std, tta=tta_settings(meta)["tta"])[1]
    return Trust.load(folder).temperature, features
