"""The HTTP API: FastAPI routes around one loaded `Predictor`.

Handlers read the raw body themselves (bounded by `max_body_bytes`) instead of declaring
pydantic bodies: that is what lets one route accept multipart uploads, raw image bytes and
JSON alike, answer an oversized body with 413 before buffering it, and keep per-request
overhead low. The model runs in one inference thread fed in batches (fmnist.serve.batching),
so HTTP work and model work use different cores.

Every client mistake is a 4xx with {"detail": message}; nothing a client sends can make the
server stop answering.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from fmnist import __version__
from fmnist.predict import Predictor, softmax, top_classes
from fmnist.serve import schemas
from fmnist.serve.batching import InferenceQueue
from fmnist.serve.preprocess import ImageError, array_to_gray, as_dataset_image, decode_image

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_MAX_BODY = 5_000_000
DEFAULT_MAX_BATCH = 256
log = logging.getLogger("fmnist.serve")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _json(payload: Any, status: int = 200) -> Response:
    # json.dumps directly: the payload is plain data, so FastAPI's encoder pass is wasted work.
    return Response(json.dumps(payload, separators=(",", ":")), status_code=status, media_type="application/json")


async def _drain(request: Request, budget: int) -> None:
    """Read and drop what is left of a refused body, so the client can read our answer."""
    try:
        async for chunk in request.stream():
            budget -= len(chunk)
            if budget < 0:
                return
    except Exception:  # the client went away: nothing left to do
        return


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid Content-Length header")
        if int(declared) > limit:
            await _drain(request, 8 * limit)
            raise ApiError(413, f"request body of {int(declared):,} bytes exceeds the {limit:,}-byte limit")
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            await _drain(request, 8 * limit)
            raise ApiError(413, f"request body exceeds the {limit:,}-byte limit")
        parts.append(chunk)
    return b"".join(parts)


async def _multipart_files(request: Request, body: bytes, limit: int) -> list[tuple[str, bytes]]:
    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_part_size=limit).parse()
    except MultiPartException as exc:
        raise ApiError(422, f"malformed multipart body ({exc.message})") from None
    files = []
    for _, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.append((value.filename or "upload", await value.read()))
            await value.close()
    if not files:
        raise ApiError(422, "multipart body holds no file part (send the image as a file field, e.g. 'file')")
    return files


def _decode(name: str, data: bytes, preprocess: bool) -> np.ndarray:
    try:
        gray = decode_image(data)
    except ImageError as exc:
        raise ApiError(415, f"{name}: {exc}") from None
    try:
        return as_dataset_image(gray, preprocess)
    except ImageError as exc:  # decodable, but unusable: no item in it, or the wrong size
        raise ApiError(422, f"{name}: {exc}") from None


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
    if array.shape != (28, 28):
        raise ApiError(422, f"{what} must be 28x28, got shape {list(array.shape)}")
    try:
        return as_dataset_image(array_to_gray(array, what), preprocess)
    except ImageError as exc:
        raise ApiError(422, str(exc)) from None


def _parse_json(body: bytes) -> Any:
    if not body:
        raise ApiError(422, 'empty request body; send JSON like {"pixels": [[...28 numbers...], ...28 rows]}')
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(422, f"body is not valid JSON ({getattr(exc, 'msg', exc)})") from None
    except RecursionError:  # e.g. 100,000 nested brackets
        raise ApiError(422, "JSON body is nested too deeply") from None


async def images_from_request(
    request: Request, limit: int, batch: bool, preprocess: bool | None
) -> tuple[list[str], np.ndarray]:
    """Names and uint8 (N,28,28) images from a multipart, raw-image or JSON request."""
    body = await read_body(request, limit)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json" or kind.endswith("+json"):
        payload = _parse_json(body)
        if not isinstance(payload, dict) or "pixels" not in payload:
            raise ApiError(422, 'JSON body must be an object with a "pixels" field')
        if batch:
            items = payload["pixels"]
            if not isinstance(items, list) or not items:
                raise ApiError(422, '"pixels" must be a non-empty list of 28x28 images')
            _check_batch_size(len(items), request)
            images = [_pixels(item, f"pixels[{i}]", bool(preprocess)) for i, item in enumerate(items)]
            return [f"pixels[{i}]" for i in range(len(items))], np.stack(images)
        return ["pixels"], _pixels(payload["pixels"], "pixels", bool(preprocess))[None]
    preprocess = True if preprocess is None else preprocess
    if kind == "multipart/form-data":
        files = await _multipart_files(request, body, limit)
        if not batch and len(files) > 1:
            raise ApiError(422, f"/predict takes one image, got {len(files)}; use /predict/batch")
        _check_batch_size(len(files), request)
        return [n for n, _ in files], np.stack([_decode(n, d, preprocess) for n, d in files])
    if kind.startswith("image/") or kind in ("application/octet-stream", "application/x-npy", ""):
        if not body:
            raise ApiError(
                415 if kind else 422,
                "empty request body; send an image (multipart 'file' field or raw bytes) or JSON pixels",
            )
        return ["body"], _decode("body", body, preprocess)[None]
    raise ApiError(
        415, f"unsupported Content-Type {kind!r}; send multipart/form-data, an image/* body or application/json"
    )


def _check_batch_size(n: int, request: Request) -> None:
    limit = request.app.state.max_batch
    if n > limit:
        raise ApiError(413, f"batch of {n} images exceeds the limit of {limit}")


async def _answer(predictor: Predictor, queue: InferenceQueue, images: np.ndarray, names: list[str], top_k: int,
                  gradcam: bool, include_input: bool) -> list[dict[str, Any]]:  # fmt: skip
    probabilities = softmax(await queue.run(images))
    heatmaps = None
    if gradcam and predictor_has_gradcam(predictor):
        heatmaps = await queue.call(lambda: _gradcam(predictor, images, probabilities.argmax(1)))
    results = []
    for i, row in enumerate(probabilities):
        top = top_classes(row, predictor.class_names, top_k)
        item: dict[str, Any] = {
            "name": names[i], "label": top[0]["label"], "index": top[0]["index"], "probability": top[0]["probability"],
            "top": top, "probabilities": {c: round(float(p), 6) for c, p in zip(predictor.class_names, row)},
        }  # fmt: skip
        if include_input:
            item["input"] = images[i].tolist()
        if gradcam:
            item["gradcam"] = None if heatmaps is None else np.round(heatmaps[i], 3).tolist()
        results.append(item)
    return results


def _gradcam(predictor: Predictor, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Grad-CAM maps (N,28,28) for the predicted classes (run in the inference thread)."""
    import torch

    from fmnist.analysis.gradcam import grad_cam

    x = torch.from_numpy(predictor.normalise(images))
    return grad_cam(predictor.model, x, torch.from_numpy(classes.astype(np.int64))).numpy()


def predictor_has_gradcam(predictor: Predictor) -> bool:
    if getattr(predictor.model, "cam_layer", None) is None:
        return False
    try:
        import fmnist.analysis.gradcam  # noqa: F401
    except ImportError:
        return False
    return True


def _swagger_assets() -> Path | None:
    """Swagger UI's files from the fastapi-offline package, when installed.

    FastAPI's own /docs page loads Swagger UI from a CDN, so it stays blank on a machine
    without internet; with these files it is served from here like the rest of the page.
    """
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).with_name("static")
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def _offline_docs(app: FastAPI, assets: Path) -> None:
    from fastapi.openapi.docs import get_swagger_ui_html

    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} API", swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css", swagger_favicon_url="/docs-assets/favicon.png",
        )  # fmt: skip


def create_app(run_dir: Path, backend: str = "torch", threads: int = 1, max_body_bytes: int = DEFAULT_MAX_BODY,
               max_batch: int = DEFAULT_MAX_BATCH, precision: str = "auto") -> FastAPI:  # fmt: skip
    """Load the run and build the app; `app.state.predictor` holds the model."""
    import torch

    torch.set_num_threads(threads)
    predictor = Predictor(run_dir, backend=backend, threads=threads, precision=precision)
    name = predictor.meta["model"]
    docs_assets = _swagger_assets()
    app = FastAPI(
        docs_url=None if docs_assets else "/docs",
        redoc_url=None,  # ReDoc would load its script from a CDN
        title="fmnist",
        version=__version__,
        summary=f"Fashion-MNIST classifier: {name} ({backend} backend)",
        description="Upload a photo (any size, colour, light or dark background) or send 28x28 pixels; "
        "get the most likely classes. The web page at / does the same in a browser.",
    )
    app.state.predictor = predictor
    queue = app.state.queue = InferenceQueue(predictor.logits)
    app.state.max_body_bytes = max_body_bytes
    app.state.max_batch = max_batch
    has_cam = predictor_has_gradcam(predictor)
    index_html = (STATIC_DIR / "index.html").read_bytes()
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if docs_assets:
        _offline_docs(app, docs_assets)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Response:
        return _json({"detail": exc.message}, exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return _json({"detail": exc.detail}, exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:  # a bug: log it, keep serving
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _json({"detail": f"internal error: {type(exc).__name__}"}, 500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> Response:
        return Response(index_html, media_type="text/html; charset=utf-8")

    @app.get("/health", response_model=schemas.Health, summary="Liveness: answers while the server runs")
    async def health() -> Response:
        return _json({"status": "ok", "model": name, "backend": backend})

    @app.get(
        "/model", response_model=schemas.ModelInfo, summary="The served model: name, size, accuracy, data provenance"
    )
    async def model_info() -> Response:
        return _json(
            {**predictor.describe(), "gradcam": has_cam, "max_body_bytes": max_body_bytes, "max_batch": max_batch}
        )

    @app.post("/predict", response_model=schemas.Prediction, openapi_extra=schemas.request_body(batch=False),
              responses=schemas.ERRORS, summary="Classify one image")  # fmt: skip
    async def predict(
        request: Request,
        top_k: int = Query(3, ge=1, le=10, description="How many classes to list in `top`"),
        preprocess: bool | None = Query(
            None, description="Convert to Fashion-MNIST form (default: yes for images, no for JSON pixels)"
        ),  # fmt: skip
        gradcam: bool = Query(False, description="Add a 28x28 Grad-CAM map (CNN models; null otherwise)"),
        include_input: bool = Query(False, description="Add the 28x28 uint8 image the model saw"),
    ) -> Response:
        names, images = await images_from_request(request, max_body_bytes, batch=False, preprocess=preprocess)
        return _json((await _answer(predictor, queue, images, names, top_k, gradcam, include_input))[0])

    @app.post("/predict/batch", response_model=schemas.BatchPrediction, openapi_extra=schemas.request_body(batch=True),
              responses=schemas.ERRORS, summary=f"Classify up to {max_batch} images")  # fmt: skip
    async def predict_batch(
        request: Request,
        top_k: int = Query(3, ge=1, le=10),
        preprocess: bool | None = Query(None),
        gradcam: bool = Query(False),
        include_input: bool = Query(False),
    ) -> Response:
        names, images = await images_from_request(request, max_body_bytes, batch=True, preprocess=preprocess)
        answers = await _answer(predictor, queue, images, names, top_k, gradcam, include_input)
        return _json({"model": name, "predictions": answers})

    return app
