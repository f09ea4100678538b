"""What every HTTP surface of the gateway shares: status mapping, error handlers, identity, bounded bodies."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount, get_route_path
from starlette.types import Scope

from gateway.core.errors import (
    CallerGone,
    Conflict,
    DeadlineExceeded,
    GatewayError,
    InvalidInput,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
)
from gateway.core.types import Identity, Route, new_request_id
from gateway.monitoring.tracing import TRACING, fastapi_telemetry
from gateway.security.identity import DEV_IDENTITY, identity_from_peercert, serial_of_peercert
from gateway.security.tls_reload import check_not_revoked

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
ROUTING_KEY_HEADER = "x-routing-key"
"""Sticky rollout routing by this key instead of the client certificate's identity."""
VERSION_HEADER = "x-model-version"
ARM_HEADER = "x-rollout-arm"


def json_response(body: Any, headers: Mapping[str, str], numbers: np.ndarray | Iterable[float]) -> Response:
    """``body`` as JSON (orjson). A ``numbers`` value that is not finite (NaN, infinity: a broken model) is the
    ValueError FastAPI's JSONResponse raised for it, answered 500, instead of orjson's silent ``null``."""
    finite = np.isfinite(numbers).all() if isinstance(numbers, np.ndarray) else all(map(math.isfinite, numbers))
    if not finite:
        raise ValueError("Out of range float values are not JSON compliant")
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)


def version_headers(route: Route) -> dict[str, str]:
    """Every answer says which version served it, and which rollout arm chose it."""
    return {VERSION_HEADER: route.version, ARM_HEADER: route.arm}


KSERVE_PREFIX = "/v2"
TFSERVING_PREFIX = "/v1/models"

HTTP_STATUS: dict[type[GatewayError], int] = {
    InvalidInput: 400,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    Unauthenticated: 401,
    PermissionDenied: 403,
    Conflict: 409,
    NotFound: 404,
    Overloaded: 429,
    DeadlineExceeded: 504,
    CallerGone: 499,  # nginx's "client closed request": nobody receives it, it names the end in logs and metrics
    Unavailable: 503,
    GatewayError: 500,
}
"""The one place gateway errors become HTTP status codes, looked up along the class hierarchy."""


def http_status_for(error: GatewayError) -> int:
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def http_code(error: GatewayError) -> str:
    """The metric label of an error on an HTTP surface."""
    return str(http_status_for(error))


ErrorBody = Callable[[str, str, str], dict]
"""(error code, message, request id) -> the JSON body of an error answer: each surface has its own."""


def gateway_error_body(code: str, message: str, request_id: str) -> dict:
    """The gateway's own error shape."""
    return {"error": {"code": code, "message": message}, "request_id": request_id}


def plain_error_body(code: str, message: str, request_id: str) -> dict:
    """What KServe v2 and TensorFlow Serving clients expect: ``{"error": "message"}``."""
    return {"error": message}


def error_handlers(body: ErrorBody) -> dict:
    """The exception handlers of one HTTP application (``FastAPI(exception_handlers=...)``), answering errors
    in ``body``'s shape; statuses come from HTTP_STATUS, looked up along the error's class hierarchy."""

    def respond(request: Request, status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
        request_id = request_id_of(request)
        payload = body(code, message, request_id)
        if TRACING.on:
            payload["trace_id"] = TRACING.trace_id()
        return JSONResponse(
            payload,
            status_code=status,
            headers={REQUEST_ID_HEADER: request_id, "x-gateway-error-code": code, **(headers or {})},
        )

    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        headers = {}
        if isinstance(exc, Overloaded):
            headers["retry-after"] = str(max(1, round(exc.retry_after_s)))
        if getattr(request.state, "body_unread", False):
            headers["connection"] = "close"  # do not drain a body we refused: drop the connection
        return respond(request, http_status_for(exc), exc.code, exc.message, headers)

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return respond(request, 400, InvalidInput.code, details)

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: NotFound.code, 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return respond(request, exc.status_code, code, str(exc.detail))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = request_id_of(request)
        log.exception("unexpected error in request %s", request_id)
        return respond(request, 500, GatewayError.code, f"internal error; quote request id {request_id}")

    return {
        GatewayError: gateway_error,
        RequestValidationError: validation_error,
        StarletteHTTPException: http_error,
        Exception: unexpected,
    }


PLAIN_ERRORS = error_handlers(plain_error_body)
"""The exception handlers of the KServe v2 and TF Serving surfaces (their apps and their hot routes)."""


def surface_app() -> FastAPI:
    """An application for a foreign protocol's surface (KServe v2, TF Serving): no docs of its own, and errors
    in the shape its clients expect."""
    return FastAPI(
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        exception_handlers=PLAIN_ERRORS,
        telemetry=fastapi_telemetry(TRACING),  # the enclosing application's span covers its requests
    )


class SurfaceMount(Mount):
    """Mounts a surface's sub-application at its prefix, and also answers the bare prefix (KServe's ``GET /v2``
    is its server metadata) as the sub-application's ``/`` instead of redirecting."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and get_route_path(scope) == self.path:
            match, child = super().matches({**scope, "path": scope["path"] + "/"})
            if match is Match.FULL:
                child["path"] = scope["path"] + "/"
            return match, child
        return super().matches(scope)


def request_id_of(request: Request) -> str:
    if not hasattr(request.state, "request_id"):
        request.state.request_id = new_request_id()
    return request.state.request_id


def caller_identity(request: Request, mtls: bool) -> Identity:
    if not mtls:
        return DEV_IDENTITY
    peercert = request.scope.get("extensions", {}).get("tls", {}).get("peercert")
    if not peercert:
        raise Unauthenticated("no verified client certificate on this connection")
    check_not_revoked(serial_of_peercert(peercert))
    return identity_from_peercert(peercert)


async def read_body(request: Request, limit: int, setting: str = "limits.max_body_bytes") -> bytes:
    """Read at most ``limit`` bytes (``setting``); refuse early from Content-Length, or as soon as the stream
    passes it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        request.state.body_unread = True
        raise PayloadTooLarge(f"the body is {int(declared):,} bytes; the limit is {limit:,} ({setting})")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            request.state.body_unread = True
            raise PayloadTooLarge(f"the body exceeds the limit of {limit:,} bytes ({setting})")
        chunks.append(chunk)
    return b"".join(chunks)
