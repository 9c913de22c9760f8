"""The HTTP detection API: a Starlette app over the dynamic batcher and the worker's batch logic.

- `POST /v1/detect`    one image as the body, or multipart with one file part per image;
                       answers a MegaDetector batch-output document (`?crops=true`: each
                       cropped box also carries its JPEG, re-encoded without metadata)
- `GET /healthz`       200 while the process can serve (500 once the bundle failed to load)
- `GET /readyz`        200 once the bundle is loaded, 503 before
- `GET /metrics`       Prometheus text format, the app's own registry
- `GET /openapi.json`  the checked-in OpenAPI document (`stream/serve/openapi.json`)

Every route answers under `root_path` and without it. The bundle is loaded on the model
thread after start-up, so probes answer while it loads. Errors are JSON:
`{"error": {"status", "reason", "message"}}`, with the worker's dead-letter reason codes.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from snowtrap.models.bundle import load_bundle
from snowtrap.stream.megadetector import batch_output, completion_time
from snowtrap.stream.serve.batching import DynamicBatcher, QueueFull
from snowtrap.stream.serve.body import RequestRefused, read_images
from snowtrap.stream.serve.detection import Detector, ImageAnswer, ImageRequest, pipeline_config
from snowtrap.stream.serve.metrics import ServeMetrics
from snowtrap.stream.serve.reasons import (
    BAD_QUERY,
    CLIENT_GONE,
    NOT_READY,
    QUEUE_FULL,
    TIMEOUT,
    UNAUTHORIZED,
    status_for,
)
from snowtrap.stream.serve.settings import ServeSettings

log = logging.getLogger("stream.serve")

OPENAPI_PATH = Path(__file__).resolve().with_name("openapi.json")
DETECT_PATH = "/v1/detect"
TRUE_WORDS = ("1", "true", "yes")
FALSE_WORDS = ("", "0", "false", "no")

DetectorLoader = Callable[[ServeSettings], Detector]


def load_detector(settings: ServeSettings) -> Detector:
    """The bundle with open ONNX Runtime sessions and its operating point (slow: seconds)."""
    assert settings.bundle_dir is not None
    bundle = load_bundle(settings.bundle_dir, intra_op_threads=settings.inference_threads)
    return Detector(bundle, pipeline_config(settings, bundle))


def error_response(reason: str, message: str, headers: dict[str, str] | None = None) -> Response:
    status = status_for(reason)
    body = {"error": {"status": status, "reason": reason, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


class ServeState:
    """What the routes share: settings, metrics, the batcher, the detector once loaded."""

    def __init__(self, settings: ServeSettings, metrics: ServeMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.detector: Detector | None = None
        self.load_error: str | None = None
        self.batcher = DynamicBatcher[ImageRequest, ImageAnswer](
            self._run,
            max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000.0,
            queue_size=settings.queue_size,
            observe_batch=metrics.batch_size.observe,
        )

    def _run(self, images: list[ImageRequest]) -> list[ImageAnswer]:
        assert self.detector is not None  # nothing is queued before it is loaded
        return self.detector.run(images)

    async def load(self, loader: DetectorLoader) -> None:
        try:
            detector = await self.batcher.call_in_model_thread(lambda: loader(self.settings))
        except Exception as error:  # a bundle that cannot be served: say so on the probes
            self.load_error = f"{type(error).__name__}: {error}"
            log.error("cannot serve the model bundle: %s", self.load_error)
            return
        manifest = detector.bundle.manifest
        self.metrics.model.info(
            {"name": manifest.name, "version": manifest.version,
             "detector": "yes" if detector.bundle.has_detector else "no"}
        )  # fmt: skip
        self.detector = detector
        log.info("serving bundle %s %s", manifest.name, manifest.version)


def build_app(
    settings: ServeSettings,
    *,
    loader: DetectorLoader = load_detector,
    metrics: ServeMetrics | None = None,
) -> Starlette:
    """The API's app; `loader` builds the detector after start-up (tests may delay it)."""
    state = ServeState(settings, metrics or ServeMetrics())
    openapi = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
    if settings.root_path:
        openapi["servers"] = [{"url": settings.root_path}]
    openapi_body = json.dumps(openapi, indent=2).encode()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.batcher.start()
        loading = asyncio.get_running_loop().create_task(state.load(loader))
        try:
            yield
        finally:
            loading.cancel()
            await state.batcher.stop()

    def timed(route: str, handler: Callable[[Request], Awaitable[Response]]) -> Callable:
        async def run(request: Request) -> Response:
            started = time.perf_counter()
            response = await handler(request)
            state.metrics.request_latency.labels(route, str(response.status_code)).observe(
                time.perf_counter() - started
            )
            return response

        return run

    async def detect(request: Request) -> Response:
        state.metrics.in_flight.inc()
        try:
            return await _detect(state, request)
        finally:
            state.metrics.in_flight.dec()
            state.metrics.queue_depth.set(state.batcher.depth)

    async def healthz(request: Request) -> Response:
        if state.load_error is not None:
            return JSONResponse({"alive": False, "error": state.load_error}, status_code=500)
        return JSONResponse({"alive": True})

    async def readyz(request: Request) -> Response:
        if state.detector is None:
            why = state.load_error or "loading the model bundle"
            return JSONResponse({"ready": False, "reason": why}, status_code=503)
        manifest = state.detector.bundle.manifest
        return JSONResponse({"ready": True, "model": manifest.name, "version": manifest.version})

    async def metrics_page(request: Request) -> Response:
        state.metrics.queue_depth.set(state.batcher.depth)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi_document(request: Request) -> Response:
        return Response(openapi_body, media_type="application/json")

    routes: list[Route] = []
    for prefix in dict.fromkeys([settings.root_path, ""]):
        routes += [
            Route(prefix + DETECT_PATH, timed(DETECT_PATH, detect), methods=["POST"]),
            Route(f"{prefix}/healthz", timed("/healthz", healthz), methods=["GET"]),
            Route(f"{prefix}/readyz", timed("/readyz", readyz), methods=["GET"]),
            Route(f"{prefix}/metrics", timed("/metrics", metrics_page), methods=["GET"]),
            Route(f"{prefix}/openapi.json", openapi_document, methods=["GET"]),
        ]
    return Starlette(routes=routes, lifespan=lifespan)


def _authorised(settings: ServeSettings, request: Request) -> bool:
    if settings.api_key is None:
        return True
    expected = settings.api_key.get_secret_value().encode()
    given = request.headers.get("x-api-key", "")
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    return hmac.compare_digest(given.encode(), expected)


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "").strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise RequestRefused(BAD_QUERY, f"{name}={value!r}: expected true or false")


async def _detect(state: ServeState, request: Request) -> Response:
    settings, metrics = state.settings, state.metrics
    if not _authorised(settings, request):
        challenge = {"WWW-Authenticate": "Bearer"}
        return _refused(state, UNAUTHORIZED, "missing or wrong API key", challenge)
    if state.detector is None:
        why = state.load_error or "the model bundle is still loading"
        return _refused(state, NOT_READY, why, {"Retry-After": str(settings.retry_after_s)})
    try:
        crops = _flag(request, "crops")
        images = await read_images(
            request,
            max_body_bytes=settings.max_body_bytes,
            max_images=settings.max_images_per_request,
            default_name=request.query_params.get("name") or "image",
        )
    except RequestRefused as refused:
        return _refused(state, refused.reason, refused.message)
    except ClientDisconnect:
        return _refused(state, CLIENT_GONE, "the client hung up before its body arrived")
    try:
        futures = state.batcher.submit([ImageRequest(i.data, i.file_name, crops) for i in images])
    except QueueFull as full:
        retry = {"Retry-After": str(settings.retry_after_s)}
        return _refused(state, QUEUE_FULL, f"the server is busy: {full}", retry)
    metrics.queue_depth.set(state.batcher.depth)
    try:
        async with asyncio.timeout(settings.request_timeout_s):
            answers = await asyncio.gather(*futures)
    except TimeoutError:
        for future in futures:
            future.cancel()
        return _refused(state, TIMEOUT, f"no answer within {settings.request_timeout_s} s")
    return _answer(state, answers)


def _refused(
    state: ServeState, reason: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    state.metrics.failures.labels(reason, str(status_for(reason))).inc()
    return error_response(reason, message, headers)


def _answer(state: ServeState, answers: list[ImageAnswer]) -> Response:
    """200 with every image's entry when at least one image could be processed; otherwise the
    first failure's status and reason, with every image's failure entry."""
    for answer in answers:
        outcome = "failed" if not answer.ok else ("leopard" if answer.is_leopard else "no_leopard")
        state.metrics.images.labels(outcome).inc()
        if not answer.ok:
            state.metrics.failures.labels(answer.reason, str(answer.status)).inc()
    assert state.detector is not None
    document = _document(state.detector, [answer.entry for answer in answers])
    failed = [a for a in answers if not a.ok]
    if len(failed) < len(answers):
        return JSONResponse(document)
    first = failed[0]
    document["error"] = {
        "status": first.status,
        "reason": first.reason,
        "stage": first.stage,
        "message": first.error,
    }
    return JSONResponse(document, status_code=first.status)


def _document(detector: Detector, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """A MegaDetector batch-output document (format 1.4) around the image entries."""
    config = detector.config
    model = f"{config.model_name}_{config.model_version}"
    return batch_output(
        entries,
        detector=model,
        detection_completion_time=completion_time(time.time()),
        typical_detection_threshold=config.detection_threshold,
        conservative_detection_threshold=max(config.detection_threshold, config.crop_threshold),
        classifier=f"{model} leopard classifier (gates the detector)",
        classifier_metadata={"typical_classification_threshold": config.gate_threshold},
        extra_info={
            "snowtrap_serve": {
                "model_name": config.model_name,
                "model_version": config.model_version,
                "gate_threshold": config.gate_threshold,
            }
        },
    )
