"""Response and request shapes, for the OpenAPI document at /docs.

The handlers build plain dicts (cheaper than validating every response); these models only
describe them, and tests check that real answers fit them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ClassScore(BaseModel):
    label: str = Field(examples=["Trouser"])
    index: int = Field(ge=0, examples=[1])
    probability: float = Field(ge=0, le=1, examples=[0.97])


class Prediction(BaseModel):
    name: str = Field(description="File name of the upload, 'body' or 'pixels'")
    label: str = Field(description="Most likely class")
    index: int
    probability: float
    top: list[ClassScore] = Field(description="top_k classes, most likely first")
    probabilities: dict[str, float] = Field(description="Every class's probability")
    input: list[list[int]] | None = Field(None, description="With include_input: the 28x28 image the model saw")
    gradcam: list[list[float]] | None = Field(None, description="With gradcam: 28x28 map in [0,1], null for MLPs")


class BatchPrediction(BaseModel):
    model: str
    predictions: list[Prediction]


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    model: str
    backend: str


class ModelInfo(BaseModel):
    name: str
    model_args: dict[str, Any]
    family: str
    params: int | None
    test_accuracy: float | None
    data: dict[str, Any] | None = Field(description="Provenance of the training data: source, split, sha256")
    class_names: list[str]
    normalization: dict[str, float]
    tta_flip: bool
    backend: str
    precision: str
    onnx_source: str | None
    gradcam: bool
    max_body_bytes: int
    max_batch: int


class Error(BaseModel):
    detail: Any = Field(description="What was wrong with the request")


ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": Error, "description": "Body larger than the limit (default 5 MB), or too many images"},
    415: {"model": Error, "description": "Not an image, or an unsupported Content-Type"},
    422: {"model": Error, "description": "Wrong JSON shape or values, or an image with no item in it"},
}

_PIXELS = {"type": "array", "minItems": 28, "maxItems": 28,
           "items": {"type": "array", "minItems": 28, "maxItems": 28, "items": {"type": "number", "minimum": 0, "maximum": 255}}}  # fmt: skip


def request_body(batch: bool) -> dict[str, Any]:
    """OpenAPI requestBody: a multipart upload, raw image bytes, or JSON pixels."""
    if batch:
        json_schema = {"type": "object", "required": ["pixels"],
                       "properties": {"pixels": {"type": "array", "items": _PIXELS, "description": "A list of 28x28 images"}}}  # fmt: skip
        multipart = {
            "type": "object",
            "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
        }
    else:
        json_schema = {"type": "object", "required": ["pixels"],
                       "properties": {"pixels": {**_PIXELS, "description": "28x28 pixels, 0-255 (or floats in [0,1]), light item on black"}}}  # fmt: skip
        multipart = {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": multipart},
                "image/*": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": json_schema},
            },
        }
    }
