"""Request and response shapes for the OpenAPI document at /openapi.json and /docs.

The handlers build plain dicts (cheaper than validating every response); these models
describe them exactly: fields are required unless marked, extra fields are forbidden, and
sizes and ranges are bounded. tests/test_serve.py validates real answers of every endpoint,
errors included, against the served document with `jsonschema`.

Request bodies are described by hand (`request_body`): one route takes multipart uploads,
raw image bytes and JSON alike, which FastAPI's parameter declarations cannot express.
Checks that no schema can express (an upload that is not an image, a picture with no item
in it, the per-request pixel budget) are stated in the descriptions.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fmnist.constants import IMAGE_SIZE, NUM_CLASSES
from fmnist.inference.explain import NEIGHBOURS
from fmnist.serve.limits import MAX_BATCH, PIXEL_BUDGET

Probability = Annotated[float, Field(ge=0, le=1)]
Level = Annotated[int, Field(ge=0, le=255)]
Heat = Annotated[float, Field(ge=0, le=1)]
Image28 = Annotated[list[Annotated[list[Level], Field(min_length=IMAGE_SIZE, max_length=IMAGE_SIZE)]],
                    Field(min_length=IMAGE_SIZE, max_length=IMAGE_SIZE)]  # fmt: skip
Heatmap28 = Annotated[list[Annotated[list[Heat], Field(min_length=IMAGE_SIZE, max_length=IMAGE_SIZE)]],
                      Field(min_length=IMAGE_SIZE, max_length=IMAGE_SIZE)]  # fmt: skip
_EXAMPLE_SIDE = math.isqrt(PIXEL_BUDGET // MAX_BATCH)
IMAGE_CHECKS = (
    "Any size and colour mode; PNG, JPEG, WebP, BMP, GIF, TIFF or a .npy array. Refused: bytes that are not "
    "an image (415); a picture with no item in it, e.g. a uniform one (422); more than "
    f"{PIXEL_BUDGET:,} decoded pixels in one request, all images together (413; e.g. {MAX_BATCH} images of "
    f"{_EXAMPLE_SIDE}x{_EXAMPLE_SIDE}; JPEGs count at the reduced scale they are decoded at)."
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassScore(_Strict):
    label: str = Field(examples=["Trouser"])
    index: int = Field(ge=0, lt=NUM_CLASSES, examples=[1])
    probability: Probability = Field(examples=[0.97])


WITHHELD = "; withheld (null or empty) for an unknown image when the server runs with --ood reject"


class Prediction(_Strict):
    name: str = Field(description="File name of the upload, 'body' (raw bytes) or 'pixels' / 'pixels[i]' (JSON)")
    label: str | None = Field(description="Most likely class" + WITHHELD)
    index: int | None = Field(ge=0, lt=NUM_CLASSES)
    probability: Probability | None
    top: list[ClassScore] = Field(max_length=NUM_CLASSES, description="top_k classes, most likely first" + WITHHELD)
    probabilities: dict[str, Probability] = Field(
        max_length=NUM_CLASSES,
        description="Every class's probability, calibrated by the run's temperature: softmax(logits / T)" + WITHHELD,
    )
    unknown: bool | None = Field(
        description="Whether the image looks unlike Fashion-MNIST (its ood_score is above the run's threshold, "
        "see /model's calibration); null with --ood off or for a run without an OOD score"
    )
    ood_score: float | None = Field(description="Higher = less like the training images; null when `unknown` is")
    set: list[str] | None = Field(
        max_length=NUM_CLASSES,
        description="With coverage=: the prediction set, classes holding the true one with that probability "
        "(may be empty); null without coverage or for a run without sets",
    )
    note: str = Field(None, description="Only for a run without calibration: what is missing and why")
    # Absent unless asked for (never null).
    input: Image28 = Field(None, description="Only with include_input=true: the 28x28 image the model saw")
    gradcam: Heatmap28 | None = Field(
        None, description="Only with gradcam=true: a 28x28 map in [0,1]; null for models without convolutions"
    )


class BatchPrediction(_Strict):
    model: str
    predictions: list[Prediction] = Field(min_length=1, max_length=MAX_BATCH, description="In the order sent")


PngUri = Annotated[str, Field(pattern=r"^data:image/png;base64,[A-Za-z0-9+/]+=*$", description="A PNG data URI")]
Part = Literal["ood", "neighbours", "gradcam"]


class OodScore(_Strict):
    score: float = Field(description="The image's OOD score; higher = less like the training images")
    threshold: float = Field(description="The run's unknown threshold (/model's calibration)")
    unknown: bool = Field(description="Whether the score is above the threshold")


class Neighbour(_Strict):
    image: PngUri = Field(description="The 28x28 training image")
    label: str = Field(description="Its class")
    index: int = Field(ge=0, description="Its position in the dataset's training images")
    cosine: float = Field(ge=-1, le=1, description="Cosine similarity of its penultimate features to the input's")


class GradCam(_Strict):
    label: str = Field(description="The class the map is for: the most likely one")
    image: PngUri = Field(description="28x28: the input under the map in a black-red-yellow-white scale")
    flat: bool = Field(description="The map is flat: it shows no place")


class Explanation(_Strict):
    name: str = Field(description="As in /predict")
    input: PngUri = Field(description="The 28x28 image the model received")
    ood: OodScore | None = Field(description="How Fashion-MNIST-like the input is; null when absent")
    neighbours: list[Neighbour] | None = Field(
        max_length=NEIGHBOURS, description="The nearest training images by cosine similarity of the network's "
        "penultimate features, most similar first; null when absent",
    )  # fmt: skip
    gradcam: GradCam | None = Field(description="Where the network looked; null when absent")
    absent: dict[Part, str] = Field(description="Why each null part is missing, in one line")
    note: str = Field(None, description="Only for a run without calibration: what is missing and why")


class Health(_Strict):
    status: Literal["ok"]
    model: str
    backend: Literal["torch", "onnx"]


class EnsembleMember(_Strict):
    model: str
    tta: str = Field(description="The member's own test-time augmentation")
    weight: float = Field(gt=0, description="Its share of the averaged probabilities")


class Calibration(_Strict):
    temperature: float = Field(gt=0, description="Probabilities are softmax(logits / temperature); 1 = uncalibrated")
    ood: Literal["off", "warn", "reject"] = Field(description="What the server does with unknown images")
    ood_method: str | None
    ood_threshold: float | None = Field(description="ood_score above this is unknown; null when not flagged")
    prediction_sets: bool = Field(description="Whether coverage= yields sets")
    note: str | None = Field(description="What is missing and why (runs older than calibration, ensembles)")


class ModelInfo(_Strict):
    name: str
    model_args: dict[str, Any]
    family: str
    params: Annotated[int, Field(ge=0)] | None
    test_accuracy: Probability | None
    data: dict[str, Any] | None = Field(description="Provenance of the training data: source, split, sha256")
    class_names: list[str] = Field(min_length=NUM_CLASSES, max_length=NUM_CLASSES)
    normalization: dict[Literal["mean", "std"], float]
    tta: str = Field(description="Test-time augmentation the predictions average over: none, flip, flip-shift "
                     "(an ensemble: each member's)")  # fmt: skip
    members: list[EnsembleMember] = Field(None, description="Only for an ensemble: its member runs")
    backend: Literal["torch", "onnx"]
    precision: Literal["fp32", "bf16"]
    onnx_source: str | None
    gradcam: bool = Field(description="Whether gradcam=true yields maps (CNNs)")
    max_body_bytes: int = Field(ge=1)
    max_batch: int = Field(ge=1)
    max_pixels: int = Field(ge=1, description="Decoded pixels one request may hold, all images together")
    timeout_s: float = Field(gt=0, description="Idle or half-sent requests are closed after this many seconds")
    calibration: Calibration


class Error(_Strict):
    detail: str = Field(description="What was wrong, in one line")


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "Malformed Content-Length header"},
    408: {"model": Error, "description": "The request did not arrive in time (see `timeout_s` in /model)"},
    413: {
        "model": Error,
        "description": "Body over the size limit (checked before it is read, and before any "
        f"`100 Continue`), more than {MAX_BATCH} images, or more than {PIXEL_BUDGET:,} decoded pixels",
    },  # fmt: skip
    415: {"model": Error, "description": "Not an image, or an unsupported Content-Type"},
    422: {
        "model": Error,
        "description": "Wrong JSON shape or values, an image with no item in it, "
        "a malformed multipart body, or a bad query parameter",
    },  # fmt: skip
    503: {"model": Error, "description": "Too many requests waiting to be decoded; retry after `Retry-After` s"},
}


def _pixels_schema(description: str) -> dict[str, Any]:
    row = {"type": "array", "minItems": IMAGE_SIZE, "maxItems": IMAGE_SIZE,
           "items": {"type": "number", "minimum": 0, "maximum": 255}}  # fmt: skip
    return {"type": "array", "minItems": IMAGE_SIZE, "maxItems": IMAGE_SIZE, "items": row, "description": description}


PIXELS_NOTE = ("28x28 numbers, 0-255 (floats all <= 1 are read as 0-1), a light item on black as in Fashion-MNIST. "
               "NaN and infinities are refused (422).")  # fmt: skip
_BINARY = {"type": "string", "format": "binary"}


def request_body(batch: bool) -> dict[str, Any]:
    """OpenAPI requestBody: a multipart upload, raw image bytes, or JSON pixels."""
    if batch:
        pixels = {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": _pixels_schema(PIXELS_NOTE),
                  "description": f"1 to {MAX_BATCH} images"}  # fmt: skip
        files = {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": {**_BINARY, "description": IMAGE_CHECKS},
                 "description": f"1 to {MAX_BATCH} image files (any field name is accepted)"}  # fmt: skip
        multipart = {"type": "object", "required": ["files"], "properties": {"files": files}}
    else:
        pixels = _pixels_schema(PIXELS_NOTE)
        file = {**_BINARY, "description": f"One image file (any field name is accepted). {IMAGE_CHECKS}"}
        multipart = {"type": "object", "required": ["file"], "properties": {"file": file}}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": multipart},
                "image/*": {"schema": {**_BINARY, "description": f"The image's bytes. {IMAGE_CHECKS}"}},
                "application/json": {
                    "schema": {"type": "object", "required": ["pixels"], "properties": {"pixels": pixels}}
                },
            },  # fmt: skip
        }
    }
