"""Inference on raw images: load a run once, give it uint8 28x28 images, get class probabilities.

`Predictor` hides the backend: PyTorch eager (the checkpoint itself) or ONNX Runtime (the run's
exported model.onnx when it matches the checkpoint and trust record, else an export made in memory; its
graph gives the features too, so the ONNX backend needs no PyTorch forward pass). Both apply
the run's normalisation (fmnist.data.normalize) and test-time augmentation (fmnist.inference.tta), so
they answer alike. An ensemble directory (fmnist.inference.ensemble_model) loads the same way.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from torch import nn

from fmnist.constants import EVAL_BATCH_SIZE, IMAGE_SIZE
from fmnist.data.normalize import normalize
from fmnist.device import resolve_precision
from fmnist.errors import UsageError
from fmnist.inference.checkpoint import normalization, tta_settings
from fmnist.inference.trust import Assessment, Trust, embed

BACKENDS = ("torch", "onnx")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class TopClass(TypedDict):
    """One of the most likely classes of an image (the HTTP API's schemas.ClassScore)."""

    label: str
    index: int
    probability: float


def top_classes(probabilities: np.ndarray, class_names: list[str], k: int) -> list[TopClass]:
    """The k most likely classes of one probability row, best first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [TopClass(label=class_names[i], index=int(i), probability=float(probabilities[i])) for i in order]


class Predictor:
    """A loaded run or ensemble ready for inference. Not thread-safe: give each thread its own, or serialise calls."""

    def __init__(self, run_dir: Path, backend: str = "torch", threads: int | None = None, precision: str = "auto"):
        from fmnist.inference.ensemble_model import load_inference_model

        if backend not in BACKENDS:
            raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        self.run_dir, self.model, self.meta = load_inference_model(Path(run_dir))
        self.backend = backend
        # PyTorch backend: "auto" is bf16 where the CPU has AMX (as `fmnist evaluate` does), else fp32.
        self.precision = precision
        self.class_names: list[str] = list(self.meta["class_names"])
        self.mean, self.std = normalization(self.meta)
        # normalize() of every pixel value, looked up per pixel: one numpy step instead of a few
        # torch ops per call (the server calls this per request), with exactly normalize()'s values.
        self._lookup = normalize(np.arange(256, dtype=np.uint8)[None], self.mean, self.std).numpy().reshape(256)
        self.is_ensemble = "members" in self.meta
        self.family = self.meta.get("family") or getattr(self.model, "family", "unknown")
        self.onnx_source = ""
        self._session = None
        if backend == "onnx":
            from fmnist.inference.export import onnx_for_run, onnx_session
            from fmnist.inference.export_metadata import FEATURES_NAME, onnx_metadata

            blob, self.onnx_source = onnx_for_run(self.run_dir, self.model, self.meta, self.trust.temperature)
            self._session = onnx_session(blob, threads=threads)
            self._input_name = self._session.get_inputs()[0].name
            # The graph's logits are divided by this (fmnist.inference.export); multiplied back here, so both
            # backends' `logits` are the network's own and the trust record applies its temperature once.
            self._graph_temperature = float(onnx_metadata(blob).get("fmnist.temperature", 1.0))
            self._graph_features = [o.name for o in self._session.get_outputs()][1:2] == [FEATURES_NAME]

    @property
    def cam_model(self) -> nn.Module | None:
        """The network Grad-CAM can explain, or None: an ensemble has no single one, an MLP no spatial map."""
        if self.is_ensemble or getattr(self.model, "cam_layer", None) is None:
            return None
        return self.model

    def normalise(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N,28,28) -> float32 (N,1,28,28) model input (fmnist.data.normalize)."""
        images = np.asarray(images)
        if images.dtype != np.uint8:
            return normalize(images, self.mean, self.std).numpy()
        return self._lookup[images][:, None]

    def logits(self, images: np.ndarray, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
        """uint8 (N,28,28) -> float32 logits (N, classes); an ensemble's are log mean probabilities."""
        images = np.asarray(images)
        if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"expected images of shape (N,28,28), got {list(images.shape)}")
        if len(images) == 0:
            return np.empty((0, len(self.class_names)), dtype=np.float32)
        if self._session is not None:
            return self._run_graph(images, batch_size)[0]
        from fmnist.inference.evaluate import predict

        x = normalize(images, self.mean, self.std)
        return predict(
            self.model, x, batch_size=batch_size, precision=self.precision, **tta_settings(self.meta)
        ).numpy()

    def _run_graph(self, images: np.ndarray, batch_size: int = EVAL_BATCH_SIZE) -> list[np.ndarray]:
        """The ONNX graph's outputs for uint8 images: [logits (unscaled), features if the graph has them]."""
        parts = [self._session.run(None, {self._input_name: self.normalise(images[i : i + batch_size])})
                 for i in range(0, len(images), batch_size)]  # fmt: skip
        outputs = [np.concatenate(o).astype(np.float32, copy=False) for o in zip(*parts)]
        if self._graph_temperature != 1.0:
            outputs[0] = outputs[0] * np.float32(self._graph_temperature)
        return outputs

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Uncalibrated softmax probabilities; `assess` gives the calibrated ones (what predict and serve answer)."""
        return softmax(self.logits(images))

    @cached_property
    def trust(self) -> Trust:
        """The run's or ensemble's temperature, OOD threshold and conformal scores (fmnist.inference.trust)."""
        if self.is_ensemble:
            from fmnist.inference.ensemble_trust import load_ensemble_trust

            return load_ensemble_trust(self.run_dir)
        return Trust.load(self.run_dir)

    def embed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits, features) of uint8 (N,28,28) images: a run's penultimate features, an ensemble's its
        members' side by side and their mean energy (fmnist.inference.ensemble_trust; None where a member
        has none). The ONNX backend's both come from its graph (an older model.onnx without features: the
        features from the checkpoint, fp32)."""
        images = np.asarray(images)
        self.logits(images[:0])  # the same checks of the input's shape
        if self._session is not None and self._graph_features and len(images):
            logits, features = self._run_graph(images)
            return logits, features
        if self.is_ensemble:
            from fmnist.inference.ensemble_trust import embed_ensemble, has_features

            if not has_features(self.model):
                return self.logits(images), None
            precision = "fp32" if self._session is not None else self.precision
            logits, features = embed_ensemble(self.model, images, mean=self.mean, std=self.std, precision=precision)
            return (self.logits(images) if self._session is not None else logits), features
        mean, std, tta = self.mean, self.std, tta_settings(self.meta)["tta"]
        if self._session is not None:
            return self.logits(images), embed(self.model, images, mean=mean, std=std, tta=tta)[1]
        return embed(self.model, images, mean=mean, std=std, tta=tta, precision=self.precision)

    def assess(self, images: np.ndarray, coverage: float | None = None) -> Assessment:
        """Calibrated probabilities, OOD scores with unknown flags, and prediction sets at `coverage`
        (fmnist.inference.trust.Trust.assess); what the run's trust record lacks comes back None."""
        logits, features = self.embed(images) if self.trust.has_ood else (self.logits(images), None)
        return self.trust.assess(logits, features, coverage)

    def describe(self) -> dict[str, object]:
        """What /model and `predict --json` report about the loaded run (never a server path)."""
        from fmnist.inference.ensemble_model import tta_summary

        extra = self.meta.get("extra", {}) or {}
        return {
            "name": self.meta["model"],
            "model_args": self.meta.get("model_args", {}),
            "family": self.family,
            "params": self.meta.get("params"),
            "test_accuracy": extra.get("test_accuracy"),
            "data": extra.get("data"),
            "class_names": self.class_names,
            "normalization": {"mean": self.mean, "std": self.std},
            "tta": tta_summary(self.meta),
            "backend": self.backend,
            "precision": "fp32" if self.backend == "onnx" else resolve_precision(self.precision, torch.device("cpu")),
            "onnx_source": self.onnx_source or None,
            **({"members": self.meta["members"]} if self.is_ensemble else {}),
        }


OOD_MODES = ("off", "warn", "reject")


class AssessedRow(TypedDict):
    """One image of `fmnist predict --json` (and the API's rows): calibrated classes and how far to trust them."""

    top: list[TopClass]
    unknown: bool | None  # None: --ood off, or a run without an OOD score
    ood_score: float | None
    set: list[str] | None  # the prediction set's class names; None without --coverage


def assessed_rows(assessment: Assessment, class_names: list[str], k: int, ood: str = "warn") -> list[AssessedRow]:
    """One JSON-ready row per image: its top-k calibrated classes, whether it is unknown (`ood`
    "warn" flags it, "reject" also withholds its classes: `top` and `set` are empty; "off" and a run without
    an OOD score give None), its OOD score, and its prediction set (class names; None without one)."""
    if ood not in OOD_MODES:
        raise UsageError(f"--ood must be one of {', '.join(OOD_MODES)}, not {ood!r}")
    rows: list[AssessedRow] = []
    for i, p in enumerate(assessment.probabilities):
        flagged = None if ood == "off" or assessment.unknown is None else bool(assessment.unknown[i])
        score = None if flagged is None else float(assessment.ood_scores[i])
        members = None if assessment.sets is None else [class_names[c] for c in np.flatnonzero(assessment.sets[i])]
        rejected = bool(flagged) and ood == "reject"
        top = [] if rejected else top_classes(p, class_names, k)
        members = [] if rejected and members is not None else members
        rows.append(AssessedRow(top=top, unknown=flagged, ood_score=score, set=members))
    return rows
