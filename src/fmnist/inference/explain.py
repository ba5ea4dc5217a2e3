"""`fmnist predict --explain`: what the model saw in each image, and why it answered as it did.

For each input: the 28x28 image the network received (after fmnist.data.photos' preprocessing), its
calibrated top classes and OOD score against the run's threshold (fmnist.inference.trust.Trust), its
Grad-CAM map (fmnist.analysis.gradcam) and the NEIGHBOURS training images nearest to it by cosine
similarity of the penultimate features (fmnist.inference.trust.embed, fp32, the run's TTA).

The training side is the same fixed class-balanced sample of the run's training split that the trust
record's Mahalanobis fit uses (trust.TRAIN_SAMPLE images, the validation hold-out excluded). Its
features and images are computed once and cached in the run as NEIGHBOURS_FILE (safetensors), keyed
by the weights' sha256 and the TTA, so later calls need neither the dataset nor the pass over it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from fmnist.data.splits import saved_holdout, stratified_split, stratified_subsample
from fmnist.errors import DataError, UsageError
from fmnist.fsutil import atomic_write_bytes
from fmnist.inference.checkpoint import tta_settings
from fmnist.inference.predict import TopClass, top_classes
from fmnist.inference.rundir import NEIGHBOURS_FILE, WEIGHTS_FILE, read_config
from fmnist.inference.trust import TRAIN_SAMPLE, embed

if TYPE_CHECKING:
    from fmnist.data.dataset import FashionMNIST
    from fmnist.inference.predict import Predictor

NEIGHBOURS = 5
TOP_K = 3
# Why a part of an explanation is missing, as the page and the server's /explain say it.
NO_NETWORK = "an ensemble has no one feature space or network to explain"
NO_CAM = "this model has no convolutional layer to map"
NO_OOD = "this run has no unknown threshold"


def require_network(predictor: Predictor) -> None:
    if predictor.is_ensemble:
        raise UsageError(f"--explain needs a single run, not an ensemble ({NO_NETWORK})")


def training_images(predictor: Predictor, notify: Callable[[str], None], allow_download: bool = True) -> FashionMNIST:
    """The dataset whose training images the run's neighbours come from: FMNIST_DATA first (resolve_dataset
    reads it), else the folder the run was trained from, else the cache. DataError where its training images
    are not the ones the run recorded: neighbours from other images would look plausible and be wrong."""
    from fmnist.data.sources import DATA_ENV, resolve_dataset

    record = (predictor.meta.get("extra") or {}).get("data") or {}
    recorded = record.get("location")
    use_recorded = not os.environ.get(DATA_ENV) and recorded and Path(recorded).is_dir()
    notify("computing the training images' features for the explanations (once per run)")
    dataset = resolve_dataset(recorded if use_recorded else None, allow_download=allow_download, notify=notify)
    expected = ((record.get("files") or {}).get("train_images") or {}).get("raw_sha256")
    found = dataset.provenance.files.get("train_images")
    if expected and found is not None and found.raw_sha256 != expected:
        raise DataError(f"the training images in {dataset.provenance.location} are not the ones this run was "
                        f"trained on (sha256 differs); set {DATA_ENV} to that data")  # fmt: skip
    return dataset


@dataclass
class Neighbours:
    """The training images the nearest-neighbour search runs over, with their features."""

    features: np.ndarray  # (M, D) float32, penultimate features as `embed` gives them
    images: np.ndarray  # (M, 28, 28) uint8
    labels: np.ndarray  # (M,) int64
    indices: np.ndarray  # (M,) int64: positions in the dataset's training images

    def nearest(self, queries: np.ndarray, k: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
        """(rows (N, k), cosine similarities (N, k)) of the k most similar, most similar first; ties
        go to the lower row."""
        similarity = cosine(queries, self.features)
        order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(similarity, order, axis=1)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) cosine similarities of the rows of a and b (a zero row is similar to nothing: 0)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def _weights_sha256(run_dir: Path) -> str:
    return hashlib.sha256((Path(run_dir) / WEIGHTS_FILE).read_bytes()).hexdigest()


def neighbour_key(predictor: Predictor) -> dict[str, str]:
    """What the cached features depend on: the weights, the TTA and the sample's size."""
    return {"weights_sha256": _weights_sha256(predictor.run_dir), "tta": tta_settings(predictor.meta)["tta"],
            "train_sample": str(TRAIN_SAMPLE)}  # fmt: skip


def load_neighbours(predictor: Predictor, dataset: Callable[[], FashionMNIST]) -> tuple[Neighbours, bool]:
    """The run's cached Neighbours, or computed (calling `dataset()` for the images) and cached;
    the flag says whether they came from the cache."""
    path = Path(predictor.run_dir) / NEIGHBOURS_FILE
    key = neighbour_key(predictor)
    if path.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(path), "numpy") as f:
                metadata = f.metadata() or {}
            if all(metadata.get(k) == v for k, v in key.items()):
                arrays = load_file(str(path))
                return Neighbours(**{k: arrays[k] for k in ("features", "images", "labels", "indices")}), True
        except (SafetensorError, OSError, ValueError, KeyError):
            pass  # unreadable or from another format: computed again and overwritten
    neighbours = compute_neighbours(predictor, dataset())
    arrays = {k: np.ascontiguousarray(getattr(neighbours, k)) for k in ("features", "images", "labels", "indices")}
    try:
        atomic_write_bytes(path, save(arrays, metadata=key))
    except OSError:
        pass  # a read-only run still explains, just without the cache
    return neighbours, False


def compute_neighbours(predictor: Predictor, dataset: FashionMNIST) -> Neighbours:
    """Features of trust's fixed sample of the run's training split (its validation hold-out left out)."""
    labels = np.asarray(dataset.train_labels).astype(np.int64)
    val_size, seed = saved_holdout(read_config(predictor.run_dir))
    train_idx, _ = stratified_split(labels, val_size, seed)
    sample = train_idx[stratified_subsample(labels[train_idx], TRAIN_SAMPLE)]
    images = np.ascontiguousarray(dataset.train_images[sample])
    return Neighbours(features=_features(predictor, images)[1], images=images, labels=labels[sample],
                      indices=sample.astype(np.int64))  # fmt: skip


def _features(predictor: Predictor, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # fp32 on both sides, so an image of the sample is its own nearest neighbour at similarity 1.
    return embed(predictor.model, images, mean=predictor.mean, std=predictor.std,
                 tta=tta_settings(predictor.meta)["tta"], precision="fp32")  # fmt: skip


@dataclass
class Explanation:
    """What `explain` says about one image."""

    image: np.ndarray  # (28, 28) uint8: what the network received
    top: list[TopClass]  # calibrated
    temperature: float
    ood_score: float | None  # None: the run has no OOD score
    threshold: float | None
    unknown: bool | None
    cam: np.ndarray | None  # (28, 28) in [0, 1] for the top class; None: the model has no conv layer
    cam_flat: bool  # the map shows no place (fmnist.analysis.gradcam.flat_maps)
    neighbour_images: np.ndarray  # (k, 28, 28) uint8
    neighbour_labels: list[str]
    neighbour_indices: list[int]  # in the dataset's training images
    neighbour_similarity: list[float]  # cosine, most similar first
    note: str = ""


def explain(predictor: Predictor, images: np.ndarray, neighbours: Neighbours | None, top_k: int = TOP_K,
            k: int = NEIGHBOURS) -> list[Explanation]:  # fmt: skip
    """One Explanation per uint8 (N, 28, 28) image; with no `neighbours` (the training images are not at
    hand), the neighbour lists are empty."""
    require_network(predictor)
    images = np.asarray(images)
    logits, features = _features(predictor, images)
    assessment = predictor.trust.assess(logits, features)
    if neighbours is None:
        neighbours = Neighbours(features[:0], np.zeros((0, *images.shape[1:]), np.uint8), np.zeros(0, np.int64),
                                np.zeros(0, np.int64))  # fmt: skip
    rows, similarity = neighbours.nearest(features, k)
    cams, flat = _cams(predictor, images, assessment.probabilities.argmax(1))
    names = predictor.class_names
    out = []
    for i, image in enumerate(images):
        scored = assessment.ood_scores is not None
        out.append(Explanation(
            image=image, top=top_classes(assessment.probabilities[i], names, top_k),
            temperature=assessment.temperature,
            ood_score=float(assessment.ood_scores[i]) if scored else None,
            threshold=assessment.threshold, unknown=bool(assessment.unknown[i]) if scored else None,
            cam=None if cams is None else cams[i], cam_flat=bool(flat[i]) if flat is not None else False,
            neighbour_images=neighbours.images[rows[i]],
            neighbour_labels=[names[c] for c in neighbours.labels[rows[i]]],
            neighbour_indices=[int(j) for j in neighbours.indices[rows[i]]],
            neighbour_similarity=[float(s) for s in similarity[i]], note=assessment.note,
        ))  # fmt: skip
    return out


def _cams(predictor: Predictor, images: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    if predictor.cam_model is None:
        return None, None
    import torch

    from fmnist.analysis.gradcam import flat_maps, grad_cam

    x = torch.from_numpy(predictor.normalise(images))
    maps = grad_cam(predictor.cam_model, x, torch.from_numpy(classes.astype(np.int64)))
    return maps.numpy(), flat_maps(maps).numpy()
