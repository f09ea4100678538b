"""The REST surface (FastAPI): the gateway's own photo API and health endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.core.errors import (
    GatewayError,
    InvalidInput,
    NotFound,
    Overloaded,
    UnsupportedMediaType,
)
from gateway.core.types import ClassifyRequest, Route
from gateway.ingress.admin import admin_router
from gateway.ingress.health import readiness
from gateway.ingress.http_common import (
    REQUEST_ID_HEADER,
    ROUTING_KEY_HEADER,
    caller_identity,
    error_response,
    http_code,
    http_status_for,
    read_body,
    request_id_of,
    version_headers,
)
from gateway.ingress.idempotency import IDEMPOTENCY_HEADER, REPLAYED_HEADER, request_id_for, shared_calls
from gateway.ingress.kserve_http import kserve_router
from gateway.ingress.tfserving_http import tfserving_router
from gateway.monitoring.metrics import PROMETHEUS_CONTENT_TYPE
from gateway.preprocess.image import ACCEPTED_FORMATS
from gateway.service import GatewayService

log = logging.getLogger(__name__)

RAW_IMAGE_TYPES = frozenset(ACCEPTED_FORMATS.values())
MULTIPART = "multipart/form-data"
UNDECODABLE_PHOTO_TYPES = {"image/heic": "HEIC", "image/heif": "HEIF", "image/avif": "AVIF"}
"""What phones save by default, named in the 415 so a developer knows what to change."""
CLIENT_CLOSED_REQUEST = "499"
T = TypeVar("T")


class _ImageField:
    """python-multipart callbacks that keep the data of the form field named ``image``."""

    def __init__(self) -> None:
        self.data: list[bytes] | None = None
        self._in_image = False
        self._field = b""
        self._value = b""
        self._disposition = b""

    def on_part_begin(self) -> None:
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


def _image_from_multipart(body: bytes, content_type: str) -> bytes:
    """The bytes of form field ``image``, parsed with python-multipart (fast on large bodies)."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidInput("the multipart body cannot be parsed: the Content-Type has no boundary parameter")
    field = _ImageField()
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


def create_app(service: GatewayService, *, mtls: bool, max_body_bytes: int) -> FastAPI:
    """Build the REST application around an already-loaded service."""
    app = FastAPI(title="Image classifier gateway", version="1")

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        headers = {}
        if isinstance(exc, Overloaded):
            headers["retry-after"] = str(max(1, round(exc.retry_after_s)))
        if getattr(request.state, "body_unread", False):
            headers["connection"] = "close"  # do not drain a body we refused: drop the connection
        return error_response(request, http_status_for(exc), exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return error_response(request, 400, InvalidInput.code, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: NotFound.code, 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(request, exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = request_id_of(request)
        log.exception("unexpected error in request %s", request_id)
        return error_response(request, 500, GatewayError.code, f"internal error; quote request id {request_id}")

    app.include_router(kserve_router(service, mtls=mtls, max_body_bytes=max_body_bytes))
    app.include_router(tfserving_router(service, mtls=mtls, max_body_bytes=max_body_bytes))
    app.include_router(admin_router(service, mtls=mtls))

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "live"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        return readiness(service)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        caller_identity(request, mtls)
        return Response(service.metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    @app.get("/api/v1/models")
    async def list_models(request: Request) -> dict:
        caller_identity(request, mtls)
        return {"models": service.describe_models()}

    @app.get("/api/v1/models/{model}")
    async def describe_model(request: Request, model: str) -> dict:
        caller_identity(request, mtls)
        return service.describe_model(model)

    @app.post("/api/v1/predictions/{request_id}/feedback")
    async def feedback(
        request: Request,
        request_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,128}$")],
        body: Feedback,
    ) -> dict:
        """The true label of an answered prediction (from the client that asked, or an operator)."""
        return await service.record_feedback(request_id, body.label, caller_identity(request, mtls))

    @app.get("/api/v1/predictions/{request_id}/photo")
    async def sampled_photo(
        request: Request, request_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,128}$")]
    ) -> Response:
        """The photo a prediction was made from, as uploaded, if it was sampled for retraining (operators only)."""
        photo = await service.sampled_photo(request_id, caller_identity(request, mtls))
        return Response(
            photo.photo,
            media_type=photo.content_type,
            headers={"x-model": photo.model, "x-model-version": photo.version, "x-photo-id": photo.photo_id},
        )

    @app.get("/api/v1/models/{model}/accuracy")
    async def live_accuracy(request: Request, model: str) -> dict:
        """Live accuracy per version, from the feedback received so far."""
        caller_identity(request, mtls)
        return {"model": model, "versions": await service.live_accuracy(model)}

    @app.get("/api/v1/models/{model}/skew")
    async def skew(
        request: Request,
        model: str,
        version: Annotated[str | None, Query(pattern=r"^[0-9]{1,9}$")] = None,
        window: Annotated[int | None, Query(ge=10, le=100_000, description="newest N predictions")] = None,
        window_s: Annotated[
            int | None, Query(ge=0, le=366 * 86400, description="none older than this many seconds; 0: no limit")
        ] = None,
    ) -> dict:
        """Training/serving skew of the newest logged predictions against the version's training baseline."""
        caller_identity(request, mtls)
        return await service.skew(model, version, window, window_s)

    @app.post("/api/v1/models/{model}/classify")
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
    ) -> JSONResponse:
        request_id = request_id_of(request)
        started = time.perf_counter()
        replayed = False
        with service.observe("rest", model, version, http_code) as observed:
            try:
                identity = caller_identity(request, mtls)
                if idempotency_key is not None:
                    request_id = request.state.request_id = request_id_for(identity, idempotency_key)
                service.require_model(model)
                content_type = request.headers.get("content-type", "")
                media_type = _media_type(content_type)
                body = await read_body(request, max_body_bytes)
                photo = _image_from_multipart(body, content_type) if media_type == MULTIPART else body
                classify_request = ClassifyRequest(
                    model=model,
                    image=photo,
                    identity=identity,
                    version=version,
                    label=label,
                    routing_key=routing_key,
                    timeout_s=None if timeout_ms is None else timeout_ms / 1000.0,
                    priority=priority,
                    request_id=request_id,
                    received_at=started,
                )
                if idempotency_key is None:
                    prediction = await _unless_client_leaves(request, service.classify(classify_request))
                else:
                    calls = shared_calls(service)
                    work = calls.run(request_id, lambda: service.classify(classify_request))
                    prediction, replayed = await _unless_client_leaves(request, work)
            except ClientDisconnected:
                observed.done(CLIENT_CLOSED_REQUEST)
                return Response(status_code=499)  # nobody is listening; the status is for logs and metrics
            observed.done("200", prediction.version)
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

    return app
