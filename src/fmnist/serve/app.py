"""The HTTP API: FastAPI routes around one loaded `Predictor`.

Handlers read the raw body themselves instead of declaring pydantic bodies: that is what
lets one route accept multipart uploads, raw image bytes and JSON alike. The event loop only
does small work itself: a small body is parsed and decoded where it arrives, and short model
batches run there too, because handing them to threads costs more than the work. Heavy work
goes to threads: large bodies are parsed, decoded and preprocessed in a bounded pool
(fmnist.serve.inputs, fmnist.serve.batching), long batches run in one inference thread, and
large answers are serialised in the pool, so /health answers in milliseconds while a full
batch of photos is being worked on.

Every client mistake is a 4xx with {"detail": "one line"}; a client that goes away mid-upload
is a normal event (no error, no traceback); nothing a client sends can stop the server
answering others.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from fmnist import __version__
from fmnist.constants import IMAGE_SIZE
from fmnist.errors import UsageError
from fmnist.inference.predict import OOD_MODES, AssessedRow, Predictor, TopClass, assessed_rows
from fmnist.inference.trust import Assessment
from fmnist.serve import assets, schemas
from fmnist.serve.batching import DecodePool, InferenceQueue, ServerBusy
from fmnist.serve.explain import Explainer
from fmnist.serve.inputs import ApiError, ReadImages, read_images
from fmnist.serve.limits import (
    DEFAULT_MAX_BODY_MB,
    DEFAULT_TIMEOUT_S,
    INLINE_BODY_BYTES,
    INLINE_PIXELS,
    MAX_BATCH,
    PIXEL_BUDGET,
)  # fmt: skip

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_MAX_BODY = int(DEFAULT_MAX_BODY_MB * 1_000_000)
# A refused body is not read; the connection closes so its unread bytes are not taken for the next request.
CLOSE = {"Connection": "close"}
log = logging.getLogger("fmnist.serve")


class ClientGone(Exception):
    """The client closed the connection before its request body had arrived."""


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # json.dumps directly: the payload is plain data, so FastAPI's encoder pass is wasted work.
    body = json.dumps(payload, separators=(",", ":"))
    return Response(body, status_code=status, media_type="application/json", headers=headers)


class BodyLimit:
    """ASGI middleware: refuse a declared oversized body before anything reads it.

    uvicorn sends `100 Continue` the first time the app asks for the body, so answering here,
    before any handler runs, means a client that waits for `100 Continue` never sends the body.
    """

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
            refusal = None
            if declared is not None and not declared.isdigit():
                refusal = _json({"detail": "invalid Content-Length header"}, 400, CLOSE)
            elif declared is not None and int(declared) > self.limit:
                message = f"request body of {int(declared):,} bytes exceeds the {self.limit:,}-byte limit"
                refusal = _json({"detail": message}, 413, CLOSE)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it is known to exceed `limit` bytes (chunked uploads)."""
    parts, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body exceeds the {limit:,}-byte limit", CLOSE)
            parts.append(chunk)
    except ClientDisconnect:
        raise ClientGone from None
    return b"".join(parts)


class PredictionBody(TypedDict):
    """One prediction as /predict and /predict/batch write it, straight to JSON (pydantic would cost more than
    the model on small images): schemas.Prediction's fields, which test_serve checks every answer against.
    The classes are `fmnist predict --json`'s AssessedRow (calibrated; unknown, ood_score, set) plus the best one
    and every class's probability; --ood reject withholds them all for an unknown image."""

    name: str
    label: str | None  # None: withheld (--ood reject, an unknown image)
    index: int | None
    probability: float | None
    top: list[TopClass]
    probabilities: dict[str, float]  # class name -> calibrated probability, rounded to 6 places; {} when withheld
    unknown: bool | None  # None: --ood off, or a run without an OOD score
    ood_score: float | None
    set: list[str] | None  # the prediction set at the request's coverage; None without one
    note: NotRequired[str]  # why probabilities are uncalibrated, sets or the unknown answer missing (old runs)
    input: NotRequired[list[list[float]]]  # with include_input
    gradcam: NotRequired[list[list[float]] | None]  # with gradcam: None where the model has no map


def _results(assessment: Assessment, rows: list[AssessedRow], class_names: list[str], images: np.ndarray,
             names: list[str], heatmaps: np.ndarray | None, gradcam: bool, include_input: bool
             ) -> list[PredictionBody]:  # fmt: skip
    results = []
    for i, (p, row) in enumerate(zip(assessment.probabilities, rows)):
        top = row["top"]
        best = top[0] if top else None
        item = PredictionBody(
            name=names[i], label=best and best["label"], index=best and best["index"],
            probability=best and best["probability"], top=top,
            probabilities={c: round(float(v), 6) for c, v in zip(class_names, p)} if top else {},
            unknown=row["unknown"], ood_score=None if row["ood_score"] is None else round(row["ood_score"], 4),
            set=row["set"],
        )  # fmt: skip
        if assessment.note:
            item["note"] = assessment.note
        if include_input:
            item["input"] = images[i].tolist()
        if gradcam:
            item["gradcam"] = None if heatmaps is None else np.clip(np.round(heatmaps[i], 3), 0, 1).tolist()
        results.append(item)
    return results


def _read_and_decode(read: Callable[[], ReadImages]) -> tuple[ReadImages, np.ndarray]:
    parsed = read()
    return parsed, parsed.decode()


def _render_batch(model: str, *args: Any) -> bytes:
    return json.dumps({"model": model, "predictions": _results(*args)}, separators=(",", ":")).encode()


def _gradcam(predictor: Predictor, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Grad-CAM maps (N,28,28) for the predicted classes (run in the inference thread)."""
    import torch

    from fmnist.analysis.gradcam import grad_cam

    x = torch.from_numpy(predictor.normalise(images))
    return grad_cam(predictor.cam_model, x, torch.from_numpy(classes.astype(np.int64))).numpy()


def predictor_has_gradcam(predictor: Predictor) -> bool:
    if predictor.cam_model is None:
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


def _offline_docs(app: FastAPI, assets_dir: Path) -> None:
    from fastapi.openapi.docs import get_swagger_ui_html

    app.mount("/docs-assets", StaticFiles(directory=assets_dir), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} API", swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css", swagger_favicon_url="/favicon.ico",
        )  # fmt: skip


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Response:
        return _json({"detail": exc.message}, exc.status, exc.headers)

    @app.exception_handler(ServerBusy)
    async def busy(_: Request, exc: ServerBusy) -> Response:
        return _json({"detail": str(exc)}, 503, {"Retry-After": "1"})

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, _: ClientGone) -> Response:
        # Normal on the web (a closed tab, a cancelled upload): one quiet line, no traceback.
        log.info("client went away during %s %s", request.method, request.url.path)
        return Response(status_code=400)  # nobody is left to read it

    @app.exception_handler(RequestValidationError)
    async def bad_query(_: Request, exc: RequestValidationError) -> Response:
        problems = [f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in exc.errors()]
        return _json({"detail": "; ".join(problems)}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return _json({"detail": str(exc.detail)}, exc.status_code, exc.headers)  # keeps 405's Allow header

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:  # a bug: log it, keep serving
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _json({"detail": f"internal error: {type(exc).__name__}"}, 500)


def _logits_and_features(predictor: Predictor, images: np.ndarray) -> np.ndarray:
    """(N, classes + features): one array, so the inference queue batches and splits it by rows as it does logits."""
    logits, features = predictor.embed(images)
    return np.concatenate([logits, features], axis=1)


def calibration_info(predictor: Predictor, ood: str) -> dict[str, Any]:
    """/model's `calibration`: what the answers are calibrated and flagged with (schemas.Calibration)."""
    trust = predictor.trust
    flags = ood != "off" and trust.has_ood
    return {"temperature": trust.temperature, "ood": ood, "ood_method": trust.record.ood_method or None,
            "ood_threshold": trust.record.ood_threshold if flags else None, "prediction_sets": trust.has_sets,
            "note": trust.note or None}  # fmt: skip


def create_app(run_dir: Path, backend: str = "torch", threads: int = 1, max_body_bytes: int = DEFAULT_MAX_BODY,
               max_batch: int = MAX_BATCH, precision: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S,
               ood: str = "warn") -> FastAPI:  # fmt: skip
    """Load the run and build the app; `app.state.predictor` holds the model.

    Answers are calibrated by the run's trust record (fmnist.inference.trust); `ood` (off, warn, reject)
    is what to do with images above its unknown threshold, as `fmnist predict --ood` does.
    `timeout_s` is only reported by /model: the deadlines themselves are the server's
    (fmnist.serve.server), which is given the same value.
    """
    import torch

    if ood not in OOD_MODES:
        raise UsageError(f"--ood must be one of {', '.join(OOD_MODES)}, not {ood!r}")
    torch.set_num_threads(threads)
    predictor = Predictor(run_dir, backend=backend, threads=threads, precision=precision)
    trust = predictor.trust
    # The OOD score needs the penultimate features beside the logits; without it (or with --ood off) only logits.
    with_features = trust.has_ood and ood != "off"
    classes = len(predictor.class_names)
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
    model_outputs = partial(_logits_and_features, predictor) if with_features else predictor.logits
    queue = app.state.queue = InferenceQueue(model_outputs, max_batch=max_batch)
    queue.warm_up(np.zeros((min(max_batch, 32), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8))
    pool = app.state.decode_pool = DecodePool()
    has_cam = predictor_has_gradcam(predictor)
    index_html = (STATIC_DIR / "index.html").read_bytes()
    favicon, example = assets.favicon_png(), assets.example_png()
    info = {**predictor.describe(), "gradcam": has_cam, "max_body_bytes": max_body_bytes, "max_batch": max_batch,
            "max_pixels": PIXEL_BUDGET, "timeout_s": float(timeout_s),
            "calibration": calibration_info(predictor, ood)}  # fmt: skip
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if docs_assets:
        _offline_docs(app, docs_assets)
    _error_handlers(app)

    async def receive(request: Request, batch: bool, preprocess: bool | None) -> tuple[list[str], np.ndarray]:
        """The request's image names and uint8 (N,28,28) images."""
        body = await read_body(request, max_body_bytes)
        content_type = request.headers.get("content-type", "")
        read = partial(read_images, body, content_type, batch=batch, preprocess=preprocess, max_batch=max_batch,
                       route=request.url.path)  # fmt: skip
        if len(body) <= INLINE_BODY_BYTES:  # parsing it and reading its headers is cheap: done here
            parsed = read()
            images = parsed.decode() if parsed.pixels <= INLINE_PIXELS else await pool.run(parsed.decode)
        else:
            parsed, images = await pool.run(_read_and_decode, read)
        return parsed.names, images

    async def infer(request: Request, batch: bool, preprocess: bool | None, top_k: int, gradcam: bool,
                    include_input: bool, coverage: float | None) -> Response:  # fmt: skip
        names, images = await receive(request, batch, preprocess)
        outputs = await queue.run(images)
        logits, features = (outputs[:, :classes], outputs[:, classes:]) if with_features else (outputs, None)
        assessment = trust.assess(logits, features, coverage)
        rows = assessed_rows(assessment, predictor.class_names, top_k, ood)
        heatmaps = None
        if gradcam and has_cam:
            heatmaps = await queue.call(lambda: _gradcam(predictor, images, assessment.probabilities.argmax(1)))
        args = (assessment, rows, predictor.class_names, images, names, heatmaps, gradcam, include_input)
        if batch:  # hundreds of results: build and serialise them off the loop as well
            return Response(await pool.run(_render_batch, name, *args, admit=False), media_type="application/json")
        return _json(_results(*args)[0])

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> Response:
        return Response(index_html, media_type="text/html; charset=utf-8")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon_route() -> Response:
        return Response(favicon, media_type="image/png", headers={"Cache-Control": "max-age=86400"})

    @app.get("/example.png", include_in_schema=False)
    async def example_route() -> Response:
        return Response(example, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/health", response_model=schemas.Health, summary="Liveness: answers while the server runs")
    async def health() -> Response:
        return _json({"status": "ok", "model": name, "backend": backend})

    @app.get(
        "/model", response_model=schemas.ModelInfo, summary="The served model: name, size, accuracy, data provenance"
    )
    async def model_info() -> Response:
        return _json(info)

    top_k_query = Query(3, ge=1, le=10, description="How many classes to list in `top`")
    preprocess_query = Query(
        None, description="Convert to Fashion-MNIST form (default: yes for images, no for JSON pixels)"
    )
    gradcam_query = Query(False, description="Add a 28x28 Grad-CAM map (CNN models; null otherwise)")
    input_query = Query(False, description="Add the 28x28 uint8 image the model saw")
    coverage_query = Query(
        None, ge=0.01, le=0.99, description="Add `set`: the classes that hold the true one with this probability "
        "(split-conformal on the run's validation images); an empty set means no class is reliable enough",
    )  # fmt: skip

    @app.post("/predict", response_model=schemas.Prediction, openapi_extra=schemas.request_body(batch=False),
              responses=schemas.ERRORS, summary="Classify one image")  # fmt: skip
    async def predict(request: Request, top_k: int = top_k_query, preprocess: bool | None = preprocess_query,
                      gradcam: bool = gradcam_query, include_input: bool = input_query,
                      coverage: float | None = coverage_query) -> Response:  # fmt: skip
        return await infer(request, False, preprocess, top_k, gradcam, include_input, coverage)

    @app.post("/predict/batch", response_model=schemas.BatchPrediction, openapi_extra=schemas.request_body(batch=True),
              responses=schemas.ERRORS, summary=f"Classify up to {max_batch} images")  # fmt: skip
    async def predict_batch(request: Request, top_k: int = top_k_query, preprocess: bool | None = preprocess_query,
                            gradcam: bool = gradcam_query, include_input: bool = input_query,
                            coverage: float | None = coverage_query) -> Response:  # fmt: skip
        return await infer(request, True, preprocess, top_k, gradcam, include_input, coverage)

    explainer = Explainer(predictor, queue, ood)

    @app.post("/explain", response_model=schemas.Explanation, openapi_extra=schemas.request_body(batch=False),
              responses=schemas.ERRORS, summary="What the model saw in one image: its 28x28 input, "
              "OOD score, Grad-CAM map and nearest training images")  # fmt: skip
    async def explain(request: Request, preprocess: bool | None = preprocess_query) -> Response:
        names, images = await receive(request, False, preprocess)
        return _json(await explainer(images[0], names[0]))

    return app
