"""Request bodies -> model inputs: multipart uploads, raw image bytes or JSON pixels.

Everything here is synchronous and CPU-bound. It works in two steps, so the caller can choose
where each runs (fmnist.serve.app): `read_images` parses the body and reads every image's
header, which says how many pixels decoding will produce; `ReadImages.decode` then decodes.
A small request does both on the event loop (a thread hand-off would cost more than the
work); a large one runs in a DecodePool worker thread (fmnist.serve.batching), so one
request's batch of photos never delays another request's /health. Every problem with the
input becomes an ApiError (a 4xx and a one-line message).

Decoding is bounded by a pixel budget per request (fmnist.serve.limits.PIXEL_BUDGET): the
request is refused after its headers are read, before any pixel is decoded, when its
images together hold more.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fmnist.constants import IMAGE_SIZE
from fmnist.data.photos import ImageError, ImageTooLargeError, PendingImage, array_to_gray, as_dataset_image, open_image
from fmnist.serve.limits import MAX_BATCH, PIXEL_BUDGET

# Non-file fields a multipart body may carry besides its images (they are ignored).
MAX_FORM_FIELDS = 64
JSON_HINT = '{"pixels": [[...28 numbers...], ...28 rows]}'


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def media_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


class ReadImages:
    """A request body read as far as its images' headers: names, and the pixels decoding will produce."""

    def __init__(self, names: list[str], pending: list[PendingImage] | None = None,
                 ready: np.ndarray | None = None, preprocess: bool = True):  # fmt: skip
        self.names = names
        self._pending = pending or []
        self._ready = ready  # JSON pixels are model inputs already
        self._preprocess = preprocess
        self.pixels = sum(p.pixels for p in self._pending) if ready is None else int(ready.size)

    def decode(self) -> np.ndarray:
        """uint8 (N,28,28) model inputs."""
        if self._ready is not None:
            return self._ready
        images = []
        for name, image in zip(self.names, self._pending):
            try:
                gray = image.decode()
            except ImageError as exc:
                raise ApiError(415, f"{name}: {exc}") from None
            try:
                images.append(as_dataset_image(gray, self._preprocess))
            except ImageError as exc:  # decodable, but unusable: no item in it, or the wrong size
                raise ApiError(422, f"{name}: {exc}") from None
        return np.stack(images)


def read_images(
    body: bytes, content_type: str, *, batch: bool, preprocess: bool | None, max_batch: int = MAX_BATCH,
    pixel_budget: int = PIXEL_BUDGET, route: str = "/predict",
) -> ReadImages:  # fmt: skip
    """Parse one request body and read its images' headers (no pixel is decoded here); `route` names a
    one-image route in the error for several images."""
    kind = media_type(content_type)
    if kind == "application/json" or kind.endswith("+json"):
        names, images = _from_json(body, batch, bool(preprocess), max_batch)
        return ReadImages(names, ready=images)
    preprocess = True if preprocess is None else preprocess
    if kind == "multipart/form-data":
        files = multipart_files(body, content_type, max_batch)
        if not batch and len(files) > 1:
            raise ApiError(422, f"{route} takes one image, got {len(files)}; use /predict/batch")
    elif kind.startswith("image/") or kind in ("application/octet-stream", "application/x-npy", ""):
        if not body:
            raise ApiError(
                415 if kind else 422,
                "empty request body; send an image (multipart 'file' field or raw bytes) or JSON pixels",
            )
        files = [("body", body)]
    else:
        raise ApiError(
            415, f"unsupported Content-Type {kind!r}; send multipart/form-data, an image/* body or application/json"
        )
    return ReadImages([name for name, _ in files], open_all(files, pixel_budget), preprocess=preprocess)


def parse_images(body: bytes, content_type: str, **options: Any) -> tuple[list[str], np.ndarray]:
    """Names and uint8 (N,28,28) model inputs from one request body (both steps in one call)."""
    read = read_images(body, content_type, **options)
    return read.names, read.decode()


def open_all(files: list[tuple[str, bytes]], pixel_budget: int) -> list[PendingImage]:
    """Read the header of every named image file; 413 when decoding them would exceed `pixel_budget` pixels."""
    pending = []
    for name, data in files:
        try:
            pending.append(open_image(data))
        except ImageTooLargeError as exc:
            raise ApiError(413, f"{name}: {exc}") from None
        except ImageError as exc:
            raise ApiError(415, f"{name}: {exc}") from None
    total = sum(p.pixels for p in pending)
    if total > pixel_budget:
        what = "the image holds" if len(files) == 1 else f"the {len(files)} images hold"
        side = math.isqrt(pixel_budget // MAX_BATCH)
        raise ApiError(
            413, f"{what} {total:,} pixels; a request may hold at most {pixel_budget:,} "
            f"(e.g. {MAX_BATCH} images of {side}x{side}): send fewer or smaller images",
        )  # fmt: skip
    return pending


@dataclass
class _Part:
    """The multipart part being parsed: its header being read, its Content-Disposition, and its bytes."""

    header: bytes = b""  # the header's name and value, as they arrive
    value: bytes = b""
    disposition: bytes = b""
    filename: bytes | None = None  # None: not a file (a form field), or its headers are not all read yet
    data: list[bytes] = field(default_factory=list)


def multipart_files(body: bytes, content_type: str, max_files: int) -> list[tuple[str, bytes]]:
    """(filename, bytes) of every file part of a multipart/form-data body, in order."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(422, "malformed multipart body (no boundary in the Content-Type header)")
    files: list[tuple[str, bytes]] = []
    form_fields, ended = 0, False
    part = _Part()

    def begin() -> None:
        nonlocal part
        part = _Part()

    def header_end() -> None:
        if part.header.strip().lower() == b"content-disposition":
            part.disposition = part.value
        part.header = part.value = b""

    def headers_finished() -> None:
        nonlocal form_fields
        part.filename = parse_options_header(part.disposition)[1].get(b"filename")
        if part.filename is None:
            form_fields += 1
            if form_fields > MAX_FORM_FIELDS:
                raise ApiError(422, f"multipart body has more than {MAX_FORM_FIELDS} non-file fields")
        elif len(files) >= max_files:
            raise ApiError(413, f"a request may hold at most {max_files} images")

    def part_end() -> None:
        if part.filename is not None:
            name = part.filename.decode("utf-8", "replace") or "upload"
            files.append((name, b"".join(part.data)))

    def collect(data: bytes, start: int, end: int) -> None:
        if part.filename is not None:
            part.data.append(data[start:end])

    def add_header(data: bytes, start: int, end: int) -> None:
        part.header += data[start:end]

    def add_value(data: bytes, start: int, end: int) -> None:
        part.value += data[start:end]

    def body_end() -> None:
        nonlocal ended
        ended = True

    callbacks = {"on_part_begin": begin, "on_part_data": collect, "on_part_end": part_end,
                 "on_header_field": add_header, "on_header_value": add_value,
                 "on_header_end": header_end, "on_headers_finished": headers_finished,
                 "on_end": body_end}  # fmt: skip
    try:
        MultipartParser(boundary, callbacks).write(body)
    except FormParserError as exc:
        raise ApiError(422, f"malformed multipart body ({str(exc).splitlines()[0] or type(exc).__name__})") from None
    if not ended:
        raise ApiError(422, "malformed multipart body (it ends before the closing boundary)")
    if not files:
        raise ApiError(422, "multipart body holds no file part (send the image as a file field, e.g. 'file')")
    return files


def _from_json(body: bytes, batch: bool, preprocess: bool, max_batch: int) -> tuple[list[str], np.ndarray]:
    if not body:
        raise ApiError(422, f"empty request body; send JSON like {JSON_HINT}")
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(422, f"body is not valid JSON ({getattr(exc, 'msg', exc)})") from None
    except RecursionError:  # e.g. 100,000 nested brackets
        raise ApiError(422, "JSON body is nested too deeply") from None
    if not isinstance(payload, dict) or "pixels" not in payload:
        raise ApiError(422, 'JSON body must be an object with a "pixels" field')
    if not batch:
        return ["pixels"], _pixels(payload["pixels"], "pixels", preprocess)[None]
    items = payload["pixels"]
    if not isinstance(items, list) or not items:
        raise ApiError(422, '"pixels" must be a non-empty list of 28x28 images')
    if len(items) > max_batch:
        raise ApiError(413, f"batch of {len(items)} images exceeds the limit of {max_batch}")
    images = [_pixels(item, f"pixels[{i}]", preprocess) for i, item in enumerate(items)]
    return [f"pixels[{i}]" for i in range(len(items))], np.stack(images)


def _pixels(value: Any, what: str, preprocess: bool) -> np.ndarray:
    """A JSON 28x28 list of numbers (0-255, or floats in [0,1]) -> uint8 (28,28)."""
    if not isinstance(value, list):
        raise ApiError(422, f"{what} must be a 28x28 list of numbers")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise ApiError(422, f"{what} must be a 28x28 list of numbers (rows of unequal length)") from None
    if array.dtype.kind not in "iuf":
        raise ApiError(422, f"{what} must hold only numbers")
    if array.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise ApiError(422, f"{what} must be 28x28, got shape {list(array.shape)}")
    try:
        return as_dataset_image(array_to_gray(array, what), preprocess)
    except ImageError as exc:
        raise ApiError(422, str(exc)) from None
