"""REST transport (httpx, HTTP/1.1 keep-alive, mTLS): sync and async, one request/response mapping."""

from __future__ import annotations

import ssl

import httpx

from mobile_client.errors import ClientError, DeadlineExceeded, GatewayUnreachable
from mobile_client.values import ModelInfo, Prediction, Upload

RETRYABLE_STATUS = frozenset({429, 502, 503})
IDEMPOTENCY_HEADER = "idempotency-key"
ANSWER_GRACE_S = 0.5
"""How long past the deadline it sends the client still waits, so the gateway's 504 (reason, request id) arrives."""


def _headers(upload: Upload, key: str, timeout_s: float, priority: int | None) -> dict[str, str]:
    headers = {
        "content-type": upload.content_type,
        IDEMPOTENCY_HEADER: key,
        "x-request-timeout-ms": str(max(1, int(timeout_s * 1000))),
    }
    if priority is not None:
        headers["x-priority"] = str(priority)
    return headers


def _path(model: str, version: str | None) -> str:
    return f"/api/v1/models/{model}/classify" + (f"?version={version}" if version else "")


def _error(response: httpx.Response) -> ClientError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    retry_after = response.headers.get("retry-after")
    kwargs = {
        "code": error.get("code", "http_error"),
        "status": response.status_code,
        "retryable": response.status_code in RETRYABLE_STATUS,
        "retry_after_s": float(retry_after) if retry_after and retry_after.isdigit() else None,
        "request_id": body.get("request_id") or response.headers.get("x-request-id"),
    }
    message = error.get("message") or response.text[:200] or response.reason_phrase
    if response.status_code == 504:
        return DeadlineExceeded(message, **{k: v for k, v in kwargs.items() if k != "retryable"})
    return ClientError(message, **kwargs)


def _prediction(response: httpx.Response, upload: Upload) -> Prediction:
    if response.status_code != 200:
        raise _error(response)
    body = response.json()
    return Prediction(
        model=body["model"],
        version=body["version"],
        label=body["label"],
        probabilities=body["probabilities"],
        request_id=body["request_id"],
        latency_ms=body.get("latency_ms", 0.0),
        upload_bytes=len(upload.body),
        replayed=response.headers.get("idempotent-replayed") == "true",
    )


def _model_info(response: httpx.Response) -> ModelInfo:
    if response.status_code != 200:
        raise _error(response)
    return ModelInfo.from_rest(response.json())


def _unreachable(exc: httpx.HTTPError) -> GatewayUnreachable:
    return GatewayUnreachable(f"no answer from the gateway: {type(exc).__name__}: {exc}")


class RestTransport:
    def __init__(self, base_url: str, tls: ssl.SSLContext | None) -> None:
        self._client = httpx.Client(base_url=base_url, verify=tls if tls is not None else True)

    def model_info(self, model: str, timeout_s: float) -> ModelInfo:
        try:
            return _model_info(self._client.get(f"/api/v1/models/{model}", timeout=timeout_s))
        except httpx.HTTPError as exc:
            raise _unreachable(exc) from exc

    def classify(
        self, upload: Upload, model: str, *, key: str, timeout_s: float, priority: int | None, version: str | None
    ) -> Prediction:
        try:
            response = self._client.post(
                _path(model, version),
                content=upload.body,
                headers=_headers(upload, key, timeout_s, priority),
                timeout=timeout_s + ANSWER_GRACE_S,
            )
        except httpx.HTTPError as exc:
            raise _unreachable(exc) from exc
        return _prediction(response, upload)

    def close(self) -> None:
        self._client.close()


class AsyncRestTransport:
    def __init__(self, base_url: str, tls: ssl.SSLContext | None) -> None:
        self._client = httpx.AsyncClient(base_url=base_url, verify=tls if tls is not None else True)

    async def model_info(self, model: str, timeout_s: float) -> ModelInfo:
        try:
            return _model_info(await self._client.get(f"/api/v1/models/{model}", timeout=timeout_s))
        except httpx.HTTPError as exc:
            raise _unreachable(exc) from exc

    async def classify(
        self, upload: Upload, model: str, *, key: str, timeout_s: float, priority: int | None, version: str | None
    ) -> Prediction:
        try:
            response = await self._client.post(
                _path(model, version),
                content=upload.body,
                headers=_headers(upload, key, timeout_s, priority),
                timeout=timeout_s + ANSWER_GRACE_S,
            )
        except httpx.HTTPError as exc:
            raise _unreachable(exc) from exc
        return _prediction(response, upload)

    async def close(self) -> None:
        await self._client.aclose()
