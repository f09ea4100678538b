"""The REST surface (FastAPI): the gateway's own photo API and health endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, FastAPI, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field, ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.app import Gateway
from gateway.core.errors import GatewayError, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from gateway.core.limits import ParseLimits
from gateway.core.types import PhotoRequest, Prediction, Route
from gateway.ingress.admin import admin_router
from gateway.ingress.health import readiness
from gateway.ingress.http_common import (
    KSERVE_PREFIX,
    REQUEST_ID_HEADER,
    ROUTING_KEY_HEADER,
    TFSERVING_PREFIX,
    SurfaceMount,
    caller_identity,
    error_handlers,
    gateway_error_body,
    http_code,
    http_status_for,
    read_body,
    request_id_of,
    version_headers,
)
from gateway.ingress.idempotency import IDEMPOTENCY_HEADER, REPLAYED_HEADER, request_id_for
from gateway.ingress.json_body import json_object
from gateway.ingress.kserve_http import kserve_app
from gateway.ingress.tfserving_http import tfserving_app
from gateway.monitoring.export import MAX_PAGE_RECORDS, PAGE_RECORDS
from gateway.monitoring.metrics import PROMETHEUS_CONTENT_TYPE
from gateway.monitoring.monitor import Monitor
from gateway.monitoring.tracing import TRACING, fastapi_telemetry
from gateway.preprocess.image import ACCEPTED_FORMATS

log = logging.getLogger(__name__)
__all__ = ["create_app", "http_status_for"]

RAW_IMAGE_TYPES = frozenset(ACCEPTED_FORMATS.values())
MULTIPART = "multipart/form-data"
UNDECODABLE_PHOTO_TYPES = {"image/heic": "HEIC", "image/heif": "HEIF", "image/avif": "AVIF"}
"""What phones save by default, named in the 415 so a developer knows what to change."""
CLIENT_CLOSED_REQUEST = "499"
DOCS_ASSETS_URL = "/docs/assets"
"""/docs (Swagger UI) and /redoc load their scripts, CSS and icon from here: files of the fastapi-offline package,
so the pages work on a network without the internet (FastAPI's defaults load them from a public CDN)."""
T = TypeVar("T")


class _ImageField:
    """python-multipart callbacks that keep the data of the form field named ``image``, counting parts."""

    def __init__(self, max_parts: int) -> None:
        self.data: list[bytes] | None = None
        self._parts, self._max_parts = 0, max_parts
        self._in_image = False
        self._field = b""
        self._value = b""
        self._disposition = b""

    def on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > self._max_parts:
            raise PayloadTooLarge(
                f"the multipart body has more than {self._max_parts} parts (limits.multipart_max_parts); "
                "send the photo as the one field 'image'"
            )
        self._disposition = b""
        self._in_image = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._field.lower() == b"content-disposition":
            self._disposition = self._value
        self._field = self._value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._in_image = options.get(b"name") == b"image" and self.data is None
        if self._in_image:
            self.data = []

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_image:
            self.data.append(data[start:end])

    def callbacks(self) -> dict:
        names = (
            "on_part_begin",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
            "on_part_data",
        )
        return {name: getattr(self, name) for name in names}


def _image_from_multipart(body: bytes, content_type: str, max_parts: int) -> bytes:
    """The bytes of form field ``image``, parsed with python-multipart (fast on large bodies)."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidInput("the multipart body cannot be parsed: the Content-Type has no boundary parameter")
    field = _ImageField(max_parts)
    parser = MultipartParser(boundary, field.callbacks())
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidInput(f"the multipart body cannot be parsed: {exc}") from None
    if field.data is None:
        raise InvalidInput("the multipart body has no field named 'image'")
    return b"".join(field.data)


class Feedback(BaseModel):
    label: str = Field(min_length=1, max_length=64, description="the true label")


def _feedback(payload: dict) -> Feedback:
    try:
        return Feedback.model_validate(payload)
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"the feedback body is not valid: {details}") from None


class ClientDisconnected(Exception):
    """The caller closed the connection before its answer was ready."""


async def _wait_for_disconnect(request: Request) -> None:
    """Return when the client goes away (call only after the body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_client_leaves(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work``, cancelling it (and so dropping the request from its batch) if the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, GatewayError):
        await task
    raise ClientDisconnected


async def read_photo(request: Request, limits: ParseLimits) -> bytes:
    """The uploaded photo: the raw body, or the multipart field ``image``; refuses a bad Content-Type first."""
    content_type = request.headers.get("content-type", "")
    media_type = _media_type(content_type)
    body = await read_body(request, limits.body_max_bytes)
    if media_type == MULTIPART:
        return _image_from_multipart(body, content_type, limits.multipart_max_parts)
    return body


def prediction_response(prediction: Prediction, request_id: str, replayed: bool) -> JSONResponse:
    replay_headers = {REPLAYED_HEADER: "true"} if replayed else {}
    return JSONResponse(
        {
            "model": prediction.model,
            "version": prediction.version,
            "label": prediction.label,
            "probabilities": prediction.probabilities,
            "request_id": prediction.request_id,
            "latency_ms": round(prediction.latency_ms, 3),
            "arm": prediction.arm,
        },
        headers={
            REQUEST_ID_HEADER: request_id,
            **replay_headers,
            **version_headers(Route(prediction.version, prediction.arm)),
        },
    )


def _media_type(content_type: str) -> str:
    """Refuse an unsupported Content-Type before reading the body."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in RAW_IMAGE_TYPES or media_type == MULTIPART:
        return media_type
    if media_type in UNDECODABLE_PHOTO_TYPES:
        raise UnsupportedMediaType(
            f"{UNDECODABLE_PHOTO_TYPES[media_type]} photos cannot be decoded here; convert the photo to JPEG "
            f"before sending (on an iPhone: Settings > Camera > Formats > Most Compatible)"
        )
    raise UnsupportedMediaType(
        f"Content-Type {media_type or '(none)'} is not accepted; send the photo as the raw body with "
        f"Content-Type {', '.join(sorted(RAW_IMAGE_TYPES))}, or as multipart/form-data field 'image'"
    )


PredictionId = Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,128}$")]


def create_app(gateway: Gateway, *, mtls: bool, limits: ParseLimits) -> FastAPI:
    """The REST application around a built gateway: the photo API, admin, health, and the KServe v2 and
    TF Serving surfaces mounted as sub-applications (each answers errors in its clients' shape)."""
    app = FastAPIOffline(
        title="Image classifier gateway",
        version="1",
        exception_handlers=error_handlers(gateway_error_body),
        static_url=DOCS_ASSETS_URL,
        swagger_ui_parameters={"validatorUrl": None},  # Swagger UI's default validator badge calls a public host
        telemetry=fastapi_telemetry(TRACING),
    )
    plane, registry = gateway.plane, gateway.registry
    surfaces = (
        (KSERVE_PREFIX, kserve_app(plane, registry, gateway.repository, mtls=mtls, limits=limits)),
        (TFSERVING_PREFIX, tfserving_app(plane, gateway.repository, mtls=mtls, limits=limits)),
    )
    app.router.routes.extend(SurfaceMount(prefix, surface) for prefix, surface in surfaces)
    app.include_router(admin_router(registry, gateway.rollout, mtls=mtls, limits=limits))
    app.include_router(_health_router(gateway, mtls))
    app.include_router(_monitoring_router(gateway.monitor, mtls, limits))
    app.include_router(_classify_router(gateway, mtls, limits))

    @app.get("/api/v1/models")
    async def list_models(request: Request) -> dict:
        caller_identity(request, mtls)
        return {"models": registry.describe_models()}

    @app.get("/api/v1/models/{model}")
    async def describe_model(request: Request, model: str) -> dict:
        caller_identity(request, mtls)
        return registry.describe_model(model)

    return app


def _health_router(gateway: Gateway, mtls: bool) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> dict:
        return {"status": "live"}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        return readiness(gateway)

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        caller_identity(request, mtls)
        return Response(gateway.metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    return router


def _monitoring_router(monitor: Monitor, mtls: bool, limits: ParseLimits) -> APIRouter:
    router = APIRouter(prefix="/api/v1")

    @router.post("/predictions/{request_id}/feedback")
    async def feedback(request: Request, request_id: PredictionId) -> dict:
        """The true label of an answered prediction (from the client that asked, or an operator).
        Body: ``{"label": "..."}``, read within ``limits.admin_max_bytes`` and ``limits.json_max_depth``."""
        identity = caller_identity(request, mtls)
        body = _feedback(await json_object(request, limits, '{"label": "hotdog"}'))
        return await monitor.record_feedback(request_id, body.label, identity)

    @router.get("/predictions/{request_id}/photo")
    async def sampled_photo(request: Request, request_id: PredictionId) -> Response:
        """The photo a prediction was made from, as uploaded, if it was sampled for retraining (operators only)."""
        photo = await monitor.sampled_photo(request_id, caller_identity(request, mtls))
        headers = {"x-model": photo.model, "x-model-version": photo.version, "x-photo-id": photo.photo_id}
        return Response(photo.photo, media_type=photo.content_type, headers=headers)

    @router.get("/models/{model}/predictions/export")
    async def export_predictions(
        request: Request,
        model: str,
        version: Annotated[str | None, Query(pattern=r"^[0-9]{1,9}$")] = None,
        since_ms: Annotated[int | None, Query(ge=0, description="stream time, Unix ms (inclusive)")] = None,
        until_ms: Annotated[int | None, Query(ge=0, description="Unix ms (inclusive); default: now")] = None,
        after: Annotated[str | None, Query(pattern=r"^[0-9]{1,20}-[0-9]{1,20}$", description="a page's cursor")] = None,
        count: Annotated[int, Query(ge=1, le=MAX_PAGE_RECORDS)] = PAGE_RECORDS,
    ) -> dict:
        """One page of the prediction log with feedback and sampled photos (`gateway predictions export`)."""
        identity = caller_identity(request, mtls)
        return await monitor.export_page(model, version, since_ms, until_ms, after, count, identity)

    @router.get("/models/{model}/accuracy")
    async def live_accuracy(request: Request, model: str) -> dict:
        """Live accuracy per version, from the feedback received so far."""
        caller_identity(request, mtls)
        return {"model": model, "versions": await monitor.live_accuracy(model)}

    @router.get("/models/{model}/skew")
    async def skew(
        request: Request,
        model: str,
        version: Annotated[str | None, Query(pattern=r"^[0-9]{1,9}$")] = None,
        window: Annotated[int | None, Query(ge=10, le=100_000, description="newest N predictions")] = None,
        window_s: Annotated[
            int | None, Query(ge=0, le=366 * 86400, description="none older than this many seconds; 0: no limit")
        ] = None,
        surface: Annotated[str | None, Query(description="photo or tensor (default: both)")] = None,
    ) -> dict:
        """Training/serving skew of the newest logged predictions per input surface against its baseline."""
        caller_identity(request, mtls)
        return await monitor.skew(model, version, window, window_s, surface)

    return router


def _classify_router(gateway: Gateway, mtls: bool, limits: ParseLimits) -> APIRouter:
    router = APIRouter()

    @router.post("/api/v1/models/{model}/classify")
    async def classify(
        request: Request,
        model: str,
        version: Annotated[str | None, Query(pattern=r"^[0-9]{1,9}$", description="model version")] = None,
        label: Annotated[
            str | None, Query(pattern=r"^(stable|canary|shadow)$", description="rollout label to pin")
        ] = None,
        routing_key: Annotated[
            str | None, Header(alias=ROUTING_KEY_HEADER, max_length=256, description="sticky rollout routing key")
        ] = None,
        timeout_ms: Annotated[
            int | None, Header(alias="x-request-timeout-ms", ge=1, le=600_000, description="deadline for the answer")
        ] = None,
        priority: Annotated[
            int | None, Header(alias="x-priority", ge=1, le=100, description="batching priority, 1 is the highest")
        ] = None,
        idempotency_key: Annotated[
            str | None, Header(alias=IDEMPOTENCY_HEADER, description="a retry with the same key is answered once")
        ] = None,
    ) -> Response:
        started = time.perf_counter()
        plane = gateway.plane
        with plane.meter("rest", model, version, http_code) as meter:
            try:
                identity = caller_identity(request, mtls)
                request_id = request_id_of(request)
                if idempotency_key is not None:
                    request_id = request.state.request_id = request_id_for(identity, idempotency_key)
                plane.spec(model)
                photo = await read_photo(request, limits)
                timeout_s = None if timeout_ms is None else timeout_ms / 1000.0
                call = PhotoRequest(
                    model, photo, identity, version, label, routing_key, timeout_s, priority, request_id, started
                )
                if idempotency_key is None:
                    prediction, replayed = await _unless_client_leaves(request, plane.classify(call)), False
                else:
                    work = gateway.idempotent_calls.run(request_id, lambda: plane.classify(call))
                    prediction, replayed = await _unless_client_leaves(request, work)
            except ClientDisconnected:
                meter.done(CLIENT_CLOSED_REQUEST, ok=False)
                return Response(status_code=499)  # nobody is listening; the status is for logs and metrics
            meter.done("200", prediction.version)
        return prediction_response(prediction, request_id, replayed)

    return router
