"""One small hierarchy of gateway errors, each with a stable machine-readable code.

Every stage raises these; each ingress (REST, gRPC) maps the hierarchy to its own
status codes in exactly one place, looked up along the exception's class hierarchy.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error a caller may see. ``code`` is stable; ``message`` is for people."""

    code = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidInput(GatewayError):
    """The request itself is malformed (bad image, wrong tensor, bad parameter)."""

    code = "invalid_input"


class PayloadTooLarge(InvalidInput):
    """The body or the decoded image exceeds a configured limit."""

    code = "payload_too_large"


class UnsupportedMediaType(InvalidInput):
    """The content type (or detected image format) is not one the gateway accepts."""

    code = "unsupported_media_type"


class NotFound(GatewayError):
    """Unknown model or version."""

    code = "not_found"


class PermissionDenied(GatewayError):
    """The caller's identity is not allowed to do this."""

    code = "permission_denied"


class Unauthenticated(GatewayError):
    """No usable client identity (only reachable when mTLS is disabled for development)."""

    code = "unauthenticated"


class Overloaded(GatewayError):
    """The queue for a model is full; retry later."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(GatewayError):
    """The request's deadline passed before it could be answered."""

    code = "deadline_exceeded"


class CallerGone(GatewayError):
    """The caller cancelled the call, or its deadline ended it, before an answer: nobody receives one.

    Never raised to a caller; it names how such a call ended in the request metrics (gRPC CANCELLED, HTTP 499)."""

    code = "caller_gone"


class Unavailable(GatewayError):
    """The model is not ready or its backend cannot be reached."""

    code = "unavailable"


class Conflict(GatewayError):
    """The resource changed since the caller read it (optimistic concurrency); read it again and retry."""

    code = "conflict"


class RateLimited(Overloaded):
    """The caller used up its rate limit (token bucket); retry after ``retry_after_s``."""

    code = "rate_limited"
