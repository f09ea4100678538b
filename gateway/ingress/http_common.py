"""What every HTTP surface of the gateway shares: status mapping, error bodies, identity, bounded bodies."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from gateway.core.errors import (
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
from gateway.security.identity import DEV_IDENTITY, identity_from_peercert, serial_of_peercert
from gateway.security.tls_reload import check_not_revoked

REQUEST_ID_HEADER = "x-request-id"
ROUTING_KEY_HEADER = "x-routing-key"
"""Sticky rollout routing by this key instead of the client certificate's identity."""
VERSION_HEADER = "x-model-version"
ARM_HEADER = "x-rollout-arm"


def version_headers(route: Route) -> dict[str, str]:
    """Every answer says which version served it, and which rollout arm chose it."""
    return {VERSION_HEADER: route.version, ARM_HEADER: route.arm}


KSERVE_PREFIX = "/v2"
TFSERVING_PREFIX = "/v1/models"
PLAIN_ERROR_PREFIXES = (KSERVE_PREFIX, TFSERVING_PREFIX)
"""Surfaces whose clients expect ``{"error": "message"}`` (KServe v2, TensorFlow Serving)."""

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


def error_response(request: Request, status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    """The gateway's error shape; KServe and TF Serving routes answer ``{"error": message}`` as their clients expect."""
    request_id = request_id_of(request)
    body: dict = {"error": {"code": code, "message": message}, "request_id": request_id}
    if request.url.path.startswith(PLAIN_ERROR_PREFIXES):
        body = {"error": message}
    return JSONResponse(
        body,
        status_code=status,
        headers={REQUEST_ID_HEADER: request_id, "x-gateway-error-code": code, **(headers or {})},
    )


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


async def read_body(request: Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes; refuse early from Content-Length, or as soon as the stream passes it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        request.state.body_unread = True
        raise PayloadTooLarge(f"the body is {int(declared):,} bytes; the limit is {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            request.state.body_unread = True
            raise PayloadTooLarge(f"the body exceeds the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
