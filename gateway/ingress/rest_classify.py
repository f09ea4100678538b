"""``POST /api/v1/models/{model}/classify``: one uploaded photo in, one prediction out.

The handler is shared by FastAPI's route (which documents it and parses what the lean path passes on)
and the hot route in front of FastAPI (gateway/ingress/hot_routes.py), which parses the same query and
header parameters itself when they are plain values.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.types import Scope

from gateway.app import Gateway
from gateway.core.errors import CallerGone, GatewayError, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from gateway.core.limits import ParseLimits
from gateway.core.types import PhotoRequest, Prediction, Route
from gateway.ingress.hot_routes import Arguments, bounded_int, header_values, query_values
from gateway.ingress.http_common import (
    REQUEST_ID_HEADER,
    ROUTING_KEY_HEADER,
    caller_identity,
    http_code,
    http_status_for,
    json_response,
    read_body,
    request_id_of,
    version_headers,
)
from gateway.ingress.http_server import HANG_UP
from gateway.ingress.idempotency import IDEMPOTENCY_HEADER, REPLAYED_HEADER, request_id_for
from gateway.preprocess.image import ACCEPTED_FORMATS

RAW_IMAGE_TYPES = frozenset(ACCEPTED_FORMATS.values())
MULTIPART = "multipart/form-data"
UNDECODABLE_PHOTO_TYPES = {"image/heic": "HEIC", "image/heif": "HEIF", "image/avif": "AVIF"}
"""What phones save by default, named in the 415 so a developer knows what to change."""
TIMEOUT_HEADER = "x-request-timeout-ms"
PRIORITY_HEADER = "x-priority"
VERSION_PATTERN = r"^[0-9]{1,9}$"
LABEL_PATTERN = r"^(stable|canary|shadow)$"
MAX_ROUTING_KEY = 256
MAX_TIMEOUT_MS = 600_000
MAX_PRIORITY = 100
T = TypeVar("T")


@dataclass(frozen=True)
class ClassifyOptions:
    """The query and header parameters of a classify call (FastAPI's route declares and documents them)."""

    version: str | None = None
    label: str | None = None
    routing_key: str | None = None
    timeout_ms: int | None = None
    priority: int | None = None
    idempotency_key: str | None = None


_VERSION, _LABEL = re.compile(VERSION_PATTERN[1:-1]), re.compile(LABEL_PATTERN[1:-1])
_HEADERS = frozenset(
    name.encode() for name in (ROUTING_KEY_HEADER, TIMEOUT_HEADER, PRIORITY_HEADER, IDEMPOTENCY_HEADER)
)


def classify_arguments(scope: Scope) -> Arguments | None:
    """The hot route's parameters, or None for FastAPI to validate (and refuse with its own message)."""
    query = query_values(scope)
    version, label = query.get("version"), query.get("label")
    if (version is not None and not _VERSION.fullmatch(version)) or (label is not None and not _LABEL.fullmatch(label)):
        return None
    headers = header_values(scope, _HEADERS)
    routing_key = headers.get(b"x-routing-key")
    timeout_ok, timeout_ms = bounded_int(headers.get(b"x-request-timeout-ms"), 1, MAX_TIMEOUT_MS)
    priority_ok, priority = bounded_int(headers.get(b"x-priority"), 1, MAX_PRIORITY)
    if not (timeout_ok and priority_ok) or (routing_key is not None and len(routing_key) > MAX_ROUTING_KEY):
        return None
    options = ClassifyOptions(version, label, routing_key, timeout_ms, priority, headers.get(b"idempotency-key"))
    return {"options": options}


Classify = Callable[[Request, str, ClassifyOptions], Awaitable[Response]]


def classify_handler(gateway: Gateway, mtls: bool, limits: ParseLimits) -> Classify:
    """``classify(request, model, options)``: the answer to one photo, or a GatewayError for the edge's handlers."""

    async def classify(request: Request, model: str, options: ClassifyOptions) -> Response:
        started = time.perf_counter()
        plane = gateway.plane
        with plane.meter("rest", model, options.version, http_code) as meter:
            try:
                identity = caller_identity(request, mtls)
                request_id = request_id_of(request)
                if options.idempotency_key is not None:
                    request_id = request.state.request_id = request_id_for(identity, options.idempotency_key)
                plane.spec(model)
                photo = await read_photo(request, limits)
                timeout_s = None if options.timeout_ms is None else options.timeout_ms / 1000.0
                call = PhotoRequest(
                    model,
                    photo,
                    identity,
                    options.version,
                    options.label,
                    options.routing_key,
                    timeout_s,
                    options.priority,
                    request_id,
                    started,
                )
                if options.idempotency_key is None:
                    prediction, replayed = await _unless_client_leaves(request, plane.classify(call)), False
                else:
                    work = gateway.idempotent_calls.run(request_id, lambda: plane.classify(call))
                    prediction, replayed = await _unless_client_leaves(request, work)
            except ClientDisconnected:
                gone = CallerGone("the client closed the connection before its answer was ready")
                meter.done(http_code(gone), ok=False)
                return Response(status_code=http_status_for(gone))  # nobody listens: for logs and metrics
            meter.done("200", prediction.version)
        return prediction_response(prediction, request_id, replayed)

    return classify


class ClientDisconnected(Exception):
    """The caller closed the connection before its answer was ready."""


async def _unless_client_leaves(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work``, cancelling it (and so dropping the request from its batch) if the client disconnects.

    On the gateway's own server the connection cancels this task when it is lost (``HangUp``): no task or
    watcher per request. Elsewhere (a test client, another ASGI server) a watcher task waits for the
    ``http.disconnect`` message."""
    hang_up = request.scope.get("extensions", {}).get(HANG_UP)
    if hang_up is None:
        return await _watching(request, work)
    if hang_up.lost:
        work.close()
        raise ClientDisconnected
    task = asyncio.current_task()
    hang_up.watch(task)
    try:
        return await work
    except (asyncio.CancelledError, GatewayError):
        if not hang_up.lost:
            raise
        if task is not None and task.cancelling():
            task.uncancel()
        raise ClientDisconnected from None
    finally:
        hang_up.watch(None)


async def _watching(request: Request, work: Coroutine[Any, Any, T]) -> T:
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


async def _wait_for_disconnect(request: Request) -> None:
    """Return when the client goes away (call only after the body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def prediction_response(prediction: Prediction, request_id: str, replayed: bool) -> Response:
    replay_headers = {REPLAYED_HEADER: "true"} if replayed else {}
    body = {
        "model": prediction.model,
        "version": prediction.version,
        "label": prediction.label,
        "probabilities": prediction.probabilities,
        "request_id": prediction.request_id,
        "latency_ms": round(prediction.latency_ms, 3),
        "arm": prediction.arm,
    }
    headers = {
        REQUEST_ID_HEADER: request_id,
        **replay_headers,
        **version_headers(Route(prediction.version, prediction.arm)),
    }
    return json_response(body, headers, prediction.probabilities.values())


async def read_photo(request: Request, limits: ParseLimits) -> bytes:
    """The uploaded photo: the raw body, or the multipart field ``image``; refuses a bad Content-Type first."""
    content_type = request.headers.get("content-type", "")
    media_type = _media_type(content_type)
    body = await read_body(request, limits.body_max_bytes)
    if media_type == MULTIPART:
        return _image_from_multipart(body, content_type, limits.multipart_max_parts)
    return body


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
