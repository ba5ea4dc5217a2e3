"""POST /explain: what the model saw in one image, for the web page's panel.

The explanation `fmnist predict --explain` writes as a page (fmnist.inference.explain), as JSON: the
28x28 input, its OOD score against the run's threshold, the Grad-CAM map over the input, and the
NEIGHBOURS nearest training images in the network's feature space, each image a PNG data URI. It is
computed by explain.explain itself, with the run's checkpoint in fp32 on either backend (an ONNX graph
has no gradients for Grad-CAM), so both backends explain alike and as the command line does.

The neighbours need the training images' features: read from the run's cache, else computed on the
first request from the data FMNIST_DATA or the run names (a request never downloads it) and cached
in the run. Where the data cannot be found, answers come without them and say why; a part the model
cannot give (Grad-CAM without convolutions, the OOD score without a threshold or with --ood off, all
three for an ensemble) is absent in the same way: null, with its reason in `absent`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NotRequired, TypedDict

import numpy as np

from fmnist.errors import FmnistError, first_line
from fmnist.inference.explain import (
    NO_CAM,
    NO_NETWORK,
    NO_OOD,
    Explanation,
    Neighbours,
    explain,
    load_neighbours,
    training_images,
)  # fmt: skip
from fmnist.inference.explain_page import data_uri, overlay
from fmnist.inference.predict import Predictor
from fmnist.serve.batching import InferenceQueue

PARTS = ("ood", "neighbours", "gradcam")
OOD_OFF = "this server runs with --ood off"
log = logging.getLogger("fmnist.serve")


class OodBody(TypedDict):
    score: float
    threshold: float
    unknown: bool


class NeighbourBody(TypedDict):
    image: str  # PNG data URI, 28x28
    label: str
    index: int  # in the dataset's training images
    cosine: float


class GradCamBody(TypedDict):
    label: str  # the class mapped: the most likely one
    image: str  # PNG data URI: the map over the input (explain_page.overlay)
    flat: bool


class ExplainBody(TypedDict):
    """/explain's answer (schemas.Explanation, which test_serve_explain checks answers against)."""

    name: str
    input: str  # PNG data URI of the 28x28 image the model received
    ood: OodBody | None
    neighbours: list[NeighbourBody] | None
    gradcam: GradCamBody | None
    absent: dict[str, str]  # part -> why it is null
    note: NotRequired[str]  # why probabilities are uncalibrated (a run older than calibration)


class Explainer:
    """Explanations for the served run. Model work goes through the server's inference queue (the model has
    one user at a time); the neighbours are loaded once, on the first request, shared by those waiting."""

    def __init__(self, predictor: Predictor, queue: InferenceQueue, ood: str):
        self.predictor, self.queue, self.ood = predictor, queue, ood
        self._neighbours: asyncio.Future | None = None

    async def __call__(self, image: np.ndarray, name: str) -> ExplainBody:
        if self.predictor.is_ensemble:
            return body(name, image, None, dict.fromkeys(PARTS, NO_NETWORK))
        neighbours, missing = await self._load()
        explanation = (await self.queue.call(lambda: explain(self.predictor, image[None], neighbours)))[0]
        absent = {"neighbours": missing} if missing else {}
        if self.ood == "off":
            absent["ood"] = OOD_OFF
        return body(name, image, explanation, absent)

    async def _load(self) -> tuple[Neighbours | None, str]:
        if self._neighbours is None:
            self._neighbours = asyncio.ensure_future(self.queue.call(self._read_or_compute))
        return await asyncio.shield(self._neighbours)  # a client that leaves does not cancel it for the others

    def _read_or_compute(self) -> tuple[Neighbours | None, str]:
        try:
            dataset = lambda: training_images(self.predictor, log.warning, allow_download=False)
            return load_neighbours(self.predictor, dataset)[0], ""
        except FmnistError as exc:
            return None, f"the training images are not at hand ({first_line(exc)})"


def body(name: str, image: np.ndarray, e: Explanation | None, absent: dict[str, str]) -> ExplainBody:
    """The JSON answer for one image; parts named in `absent` are null, and so are those `e` lacks."""
    out = ExplainBody(name=name, input=data_uri(image, 1), ood=None, neighbours=None, gradcam=None, absent=absent)
    if e is None:
        return out
    if e.ood_score is None:
        absent.setdefault("ood", e.note or NO_OOD)
    elif "ood" not in absent:
        out["ood"] = OodBody(score=round(e.ood_score, 4), threshold=e.threshold, unknown=bool(e.unknown))
    if e.cam is None:
        absent["gradcam"] = NO_CAM
    else:
        out["gradcam"] = GradCamBody(label=e.top[0]["label"], image=data_uri(overlay(e.image, e.cam), 1),
                                     flat=e.cam_flat)  # fmt: skip
    if "neighbours" not in absent:
        out["neighbours"] = [
            NeighbourBody(image=data_uri(img, 1), label=label, index=index, cosine=round(cosine, 4))
            for img, label, index, cosine in zip(
                e.neighbour_images, e.neighbour_labels, e.neighbour_indices, e.neighbour_similarity
            )
        ]  # fmt: skip
    if e.note:
        out["note"] = e.note
    return out
