"""What can go wrong on a call, and whether retrying can help."""

from __future__ import annotations


class ClientError(Exception):
    """The gateway refused or failed the call. ``code`` is the gateway's stable error code."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        status: int | str | None = None,
        retryable: bool = False,
        retry_after_s: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.code} ({self.status}): {self.message}" if self.status is not None else self.message


class GatewayUnreachable(ClientError):
    """No answer came back: connection refused, TLS handshake failed, connection lost, network timeout.

    Retryable; photos sent with an :class:`~mobile_client.offline.OfflineQueue` wait on disk until it is back.
    """

    def __init__(self, message: str, **kwargs) -> None:
        kwargs.setdefault("code", "unreachable")
        super().__init__(message, retryable=True, **kwargs)


class DeadlineExceeded(ClientError):
    """The call's deadline passed (on the gateway or while retrying)."""

    def __init__(self, message: str, **kwargs) -> None:
        kwargs.setdefault("code", "deadline_exceeded")
        super().__init__(message, **kwargs)
