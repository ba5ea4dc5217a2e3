"""How far to trust a run's answers: its temperature, its "unknown" threshold and its prediction sets.

Fitted once when a network run finishes (`fit_trust`, from fmnist.training.run_writer) or later by
`fmnist calibrate RUN_DIR`, on the run's own validation hold-out (fmnist.data.splits) and a fixed
class-balanced sample of its training split; written as TRUST_FILE (JSON numbers) and
TRUST_TENSORS_FILE (safetensors arrays, never a pickle). `Trust.load(run_dir)` reads them back for
inference; a run without them (older than this file, or trained with no validation split) loads as
temperature 1, no OOD score and no sets, with a one-line note saying so. An ensemble directory holds
the same two files, fitted by fmnist.inference.ensemble_trust.

What it holds, each chosen by benchmarks/ood_screen.py (results in benchmarks/results/ood_screen-*.json):
- the temperature T (fmnist.analysis.temperature) with the validation NLL and ECE before and after;
- the OOD score OOD_METHOD: the energy of the logits plus the Mahalanobis distance of the
  penultimate features, each standardised by its mean and spread on validation
  (fmnist.analysis.ood), and the threshold that keeps ood.KEEP (95%) of validation images;
- the sorted validation LAC scores 1 - p_T(true class) (fmnist.analysis.conformal), from which the
  split-conformal quantile for any coverage is read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from fmnist.analysis import conformal, ood
from fmnist.analysis.temperature import fit_temperature, scale
from fmnist.constants import EVAL_BATCH_SIZE
from fmnist.data.normalize import blank_value, normalize
from fmnist.data.splits import stratified_split, stratified_subsample
from fmnist.device import autocast_context
from fmnist.errors import CheckpointError
from fmnist.fsutil import atomic_write_bytes, atomic_write_json, read_json
from fmnist.inference.rundir import TRUST_FILE, TRUST_TENSORS_FILE, _from_json, _to_json
from fmnist.inference.tta import views

if TYPE_CHECKING:
    from fmnist.config import TrainConfig
    from fmnist.data.dataset import FashionMNIST
    from fmnist.models.base import Classifier

OOD_METHOD = "energy+mahalanobis"
CONFORMAL_METHOD = "lac"
# Training images the Mahalanobis class means and covariance are fitted on (a fixed, class-balanced
# sample of the training split: the whole split adds seconds and moves the threshold by little).
TRAIN_SAMPLE = 10_000
NO_TRUST_NOTE = ("this run predates calibration: probabilities are uncalibrated; "
                 "retrain or run `fmnist calibrate RUN_DIR`")  # fmt: skip
NO_VALIDATION_NOTE = ("this run held out no validation images (val_size 0): probabilities are uncalibrated, "
                      "with no unknown threshold or prediction sets")  # fmt: skip


@dataclass(kw_only=True)
class TrustFile:
    """trust.json, in the order its keys are written; the arrays go to trust.safetensors."""

    temperature: float = 1.0
    nll_before: float | None = None  # validation NLL at T = 1 and at the fitted T
    nll_after: float | None = None
    ece_before: float | None = None  # validation ECE (the report's bins) at T = 1 and at T
    ece_after: float | None = None
    validation_images: int = 0
    train_sample_images: int = 0  # the Mahalanobis fit's images
    ood_method: str = ""  # "" = no OOD score (no validation split)
    # Where the energy part comes from: "logits" (one network), or "features": an ensemble's logits are
    # log mean probabilities, whose energy is always 0, so its last feature column carries its members'
    # weighted mean energy and the Mahalanobis part reads the columns before it.
    energy_source: str = "logits"
    ood_standardisation: dict[str, dict[str, float]] = field(default_factory=dict)  # part -> {mean, std}
    ood_threshold: float | None = None  # scores above it are unknown
    ood_keep: float = ood.KEEP  # the share of validation images the threshold keeps
    conformal_method: str = ""  # "" = no prediction sets
    fit_seconds: float = 0.0
    note: str = ""
    # Arrays, in trust.safetensors: Mahalanobis class means (C, D), its whitening matrix W (D, D)
    # with precision = W @ W.T, and the sorted validation conformal scores (n,).
    mahalanobis_means: np.ndarray | None = field(default=None, repr=False)
    mahalanobis_whiten: np.ndarray | None = field(default=None, repr=False)
    conformal_scores: np.ndarray | None = field(default=None, repr=False)

    _ARRAYS = ("mahalanobis_means", "mahalanobis_whiten", "conformal_scores")

    def to_json(self) -> dict[str, object]:
        return _to_json(self, self._ARRAYS)

    def write(self, run_dir: Path) -> None:
        """trust.safetensors first, then trust.json (which readers look for), each atomically."""
        arrays = {k: np.ascontiguousarray(getattr(self, k)) for k in self._ARRAYS if getattr(self, k) is not None}
        atomic_write_bytes(Path(run_dir) / TRUST_TENSORS_FILE, save(arrays))
        atomic_write_json(Path(run_dir) / TRUST_FILE, self.to_json())

    @classmethod
    def read(cls, run_dir: Path) -> TrustFile | None:
        """The run's record, or None where it has none (a run older than calibration)."""
        path = Path(run_dir) / TRUST_FILE
        if not path.is_file():
            return None
        record = _from_json(cls, read_json(path), path)
        tensors = Path(run_dir) / TRUST_TENSORS_FILE
        try:
            arrays = load_file(str(tensors)) if tensors.is_file() else {}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{tensors}: not a readable safetensors file ({exc})") from None
        for key in cls._ARRAYS:
            setattr(record, key, arrays.get(key))
        if record.ood_method and (record.mahalanobis_means is None or record.mahalanobis_whiten is None):
            raise CheckpointError(f"{tensors}: lacks the Mahalanobis arrays {TRUST_FILE} names")
        if record.conformal_method and record.conformal_scores is None:
            raise CheckpointError(f"{tensors}: lacks the conformal scores {TRUST_FILE} names")
        return record


# --- logits and penultimate features, as inference computes them ---------------------------------
@torch.no_grad()
def embed(model: Classifier, images: np.ndarray, *, mean: float, std: float, tta: str = "none",
          precision: str = "fp32", batch_size: int = EVAL_BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """float32 (logits, features) of uint8 (N,28,28) images: the logits averaged over the run's
    test-time views exactly as fmnist.inference.evaluate.predict averages them, the features
    averaged over the same views."""
    from fmnist.inference.evaluate import model_device

    device, fill = model_device(model), blank_value(mean, std)
    was_training = model.training
    model.eval()
    logits, features = [], []
    try:
        x = normalize(images, mean, std)
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size].to(device)
            stacked = model.layout(torch.cat(views(batch, tta, fill)))  # one pass for every view
            with autocast_context(device, precision):
                f = model.forward_features(stacked)
                z = model.forward_head(f)
            f = f.float().reshape(-1, len(batch), f.shape[-1] if f.dim() == 2 else f[0].numel())
            features.append(f.mean(0).cpu().numpy())
            logits.append(z.float().reshape(-1, len(batch), z.shape[-1]).mean(0).cpu().numpy())
    finally:
        model.train(was_training)
    if not logits:
        n = getattr(model, "num_classes", 10)
        return np.empty((0, n), np.float32), np.empty((0, getattr(model, "embedding_dim", 0)), np.float32)
    return np.concatenate(logits), np.concatenate(features)


class CalibratedNetwork(torch.nn.Module):
    """One network as its ONNX export runs it (fmnist.inference.export): (logits / T, penultimate features),
    each averaged over the run's TTA views exactly as `embed` averages them, so softmax of the first output
    is `Trust.probabilities` and the second is what `Trust.ood_scores` needs."""

    def __init__(self, model: Classifier, level: str, fill: float, temperature: float):
        super().__init__()
        self.model, self.level, self.fill, self.temperature = model, level, fill, float(temperature)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        f = self.model.forward_features(torch.cat(views(x, self.level, self.fill)))
        z = self.model.forward_head(f).float()
        f = f.float().flatten(1)
        return z.reshape(-1, n, z.shape[-1]).mean(0) / self.temperature, f.reshape(-1, n, f.shape[-1]).mean(0)


ENERGY_SOURCES = ("logits", "features")


def mahalanobis_features(features: np.ndarray, energy_source: str) -> np.ndarray:
    """The feature columns the Mahalanobis part reads (all but an ensemble's energy column)."""
    return features[:, :-1] if energy_source == "features" else features


def ood_inputs(logits: np.ndarray, features: np.ndarray, energy_source: str) -> tuple[np.ndarray, np.ndarray]:
    """(energy, the features the Mahalanobis part reads) as the record's `energy_source` says."""
    energy = np.asarray(features[:, -1], np.float64) if energy_source == "features" else ood.energy(logits)
    return energy, mahalanobis_features(features, energy_source)


# --- fitting ---------------------------------------------------------------------------------------
def fit_record(val_logits: np.ndarray, val_labels: np.ndarray, val_features: np.ndarray | None,
               train_features: np.ndarray | None, train_labels: np.ndarray | None,
               energy_source: str = "logits") -> TrustFile:  # fmt: skip
    """The record from validation logits (and features) and training features: the temperature, the
    conformal scores, and (with features) the OOD score's standardisation and threshold."""
    val_labels = np.asarray(val_labels, np.int64)
    fit = fit_temperature(val_logits, val_labels)
    lac = conformal.class_scores(scale(val_logits, fit.temperature), CONFORMAL_METHOD)
    record = TrustFile(
        temperature=fit.temperature, nll_before=fit.nll_before, nll_after=fit.nll_after,
        ece_before=fit.ece_before, ece_after=fit.ece_after, energy_source=energy_source,
        validation_images=len(val_labels), conformal_method=CONFORMAL_METHOD,
        conformal_scores=np.sort(lac[np.arange(len(val_labels)), val_labels]),
    )  # fmt: skip
    if val_features is None or train_features is None:
        record.note = "no penultimate features to score: no unknown threshold"
        return record
    record.train_sample_images = len(train_features)
    val_energy, val_features = ood_inputs(val_logits, val_features, energy_source)
    try:
        maha = ood.Mahalanobis(mahalanobis_features(train_features, energy_source), train_labels)
    except np.linalg.LinAlgError:  # features with no spread at all (a dead net): no covariance to invert
        record.note = "the network's features have no spread: no unknown threshold"
        return record
    parts = {"energy": val_energy, "mahalanobis": maha.score(val_features)}
    standard = {name: ood.Standardised(s) for name, s in parts.items()}
    record.ood_method = OOD_METHOD
    record.ood_threshold = ood.threshold(sum(standard[n](s) for n, s in parts.items()))
    record.ood_standardisation = {n: {"mean": s.mean, "std": s.std} for n, s in standard.items()}
    record.mahalanobis_means, record.mahalanobis_whiten = maha.means, maha.whiten
    return record


def fit_trust(model: Classifier, dataset: FashionMNIST, *, val_size: int, holdout_seed: int, mean: float,
              std: float, tta: str = "none") -> TrustFile:  # fmt: skip
    """Fit the record on the run's validation hold-out (`val_size` images drawn by `holdout_seed`, as
    training drew them) and TRAIN_SAMPLE images of its training split, in fp32. Never changes the model."""
    started = time.perf_counter()
    labels = np.asarray(dataset.train_labels)
    if val_size <= 0:
        return TrustFile(note=NO_VALIDATION_NOTE, fit_seconds=time.perf_counter() - started)
    train_idx, val_idx = stratified_split(labels, val_size, holdout_seed)
    sample = train_idx[stratified_subsample(labels[train_idx], TRAIN_SAMPLE)]
    settings = {"mean": mean, "std": std, "tta": tta}
    val_logits, val_features = embed(model, dataset.train_images[val_idx], **settings)
    _, train_features = embed(model, dataset.train_images[sample], **settings)
    record = fit_record(val_logits, labels[val_idx], val_features, train_features, labels[sample])
    record.fit_seconds = time.perf_counter() - started
    return record


def fit_trust_for_config(model: Classifier, dataset: FashionMNIST, config: TrainConfig) -> TrustFile:
    """`fit_trust` with the hold-out, normalisation and TTA a training config records."""
    return fit_trust(model, dataset, val_size=config.val_size, holdout_seed=config.validation_seed,
                     mean=config.input_mean, std=config.input_std, tta=config.tta)  # fmt: skip


def calibrate_run(run_dir: Path, dataset: FashionMNIST) -> TrustFile:
    """Fit and write the record of a finished run (`fmnist calibrate`): its checkpoint's normalisation
    and TTA, its config.toml's hold-out."""
    from fmnist.data.splits import saved_holdout
    from fmnist.inference.checkpoint import load_checkpoint, normalization
    from fmnist.inference.rundir import read_config
    from fmnist.inference.tta import tta_level

    model, meta = load_checkpoint(run_dir)
    val_size, holdout_seed = saved_holdout(read_config(run_dir))
    mean, std = normalization(meta)
    record = fit_trust(model, dataset, val_size=val_size, holdout_seed=holdout_seed, mean=mean, std=std,
                       tta=tta_level(meta))  # fmt: skip
    record.write(run_dir)
    return record


# --- using it ----------------------------------------------------------------------------------------
@dataclass
class Assessment:
    """What `Trust.assess` says about N images."""

    probabilities: np.ndarray  # (N, C) calibrated: softmax(logits / T)
    temperature: float
    ood_scores: np.ndarray | None  # (N,) higher = less like the training data; None: no OOD score
    unknown: np.ndarray | None  # (N,) bool: score above the threshold; None: no OOD score
    threshold: float | None
    sets: np.ndarray | None  # (N, C) bool at `coverage`; None: none asked for or none possible
    coverage: float | None
    note: str = ""  # why something is missing ("" when nothing is)


class Trust:
    """A run's record ready for inference: `assess(logits, features)` and its parts."""

    def __init__(self, record: TrustFile | None, note: str = ""):
        self.record = record or TrustFile(note=note or NO_TRUST_NOTE)
        self._mahalanobis = None
        if self.record.ood_method:
            if self.record.ood_method != OOD_METHOD or self.record.energy_source not in ENERGY_SOURCES:
                raise CheckpointError(f"{TRUST_FILE}: unknown OOD method {self.record.ood_method!r} "
                                      f"(energy from {self.record.energy_source!r})")  # fmt: skip
            self._mahalanobis = ood.Mahalanobis.from_arrays(self.record.mahalanobis_means,
                                                            self.record.mahalanobis_whiten)  # fmt: skip

    @classmethod
    def load(cls, run_dir: Path, missing_note: str = "") -> Trust:
        """The directory's record, or temperature 1 with `missing_note` (default NO_TRUST_NOTE) where it has none."""
        return cls(TrustFile.read(run_dir), note=missing_note)

    @property
    def temperature(self) -> float:
        return self.record.temperature

    @property
    def note(self) -> str:
        return self.record.note

    @property
    def has_ood(self) -> bool:
        return self._mahalanobis is not None

    @property
    def has_sets(self) -> bool:
        return bool(self.record.conformal_method)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities softmax(logits / T), float32."""
        return scale(logits, self.temperature).astype(np.float32)

    def ood_scores(self, logits: np.ndarray, features: np.ndarray) -> np.ndarray:
        s = self.record.ood_standardisation
        energy, features = ood_inputs(logits, features, self.record.energy_source)
        parts = {"energy": energy, "mahalanobis": self._mahalanobis.score(features)}
        return sum((v - s[k]["mean"]) / s[k]["std"] for k, v in parts.items())

    def quantile(self, coverage: float) -> float:
        return conformal.conformal_quantile(self.record.conformal_scores, coverage)

    def sets(self, probabilities: np.ndarray, coverage: float) -> np.ndarray:
        """(N, C) membership at `coverage`; a row may be empty: no class is likely enough to include
        (empty sets are what lets coverage meet a target below the top-1 accuracy)."""
        q = self.quantile(coverage)
        return conformal.Conformal(coverage, CONFORMAL_METHOD, q, len(self.record.conformal_scores)).sets(
            probabilities, allow_empty=True
        )

    def assess(self, logits: np.ndarray, features: np.ndarray | None = None, coverage: float | None = None
               ) -> Assessment:  # fmt: skip
        """Calibrated probabilities, OOD scores and unknown flags (with features and a fitted score),
        and prediction sets at `coverage` (when given and fitted)."""
        p = self.probabilities(logits)
        scores = self.ood_scores(logits, features) if self.has_ood and features is not None else None
        sets = self.sets(p, coverage) if coverage is not None and self.has_sets else None
        return Assessment(
            probabilities=p, temperature=self.temperature, ood_scores=scores,
            unknown=None if scores is None else scores > self.record.ood_threshold,
            threshold=self.record.ood_threshold if scores is not None else None,
            sets=sets, coverage=coverage if sets is not None else None, note=self.note,
        )  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """The record's numbers, for `predict --json` and the API (no arrays)."""
        return {**self.record.to_json(), "prediction_sets": self.has_sets}
