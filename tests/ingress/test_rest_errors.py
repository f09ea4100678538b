"""The REST edge's single mapping from gateway errors to HTTP, exercised through the app."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from gateway.core import errors
from gateway.core.limits import ParseLimits
from gateway.core.types import PhotoRequest
from gateway.ingress.idempotency import IdempotentCalls
from gateway.ingress.rest import create_app, http_status_for
from gateway.monitoring.metrics import GatewayMetrics, RequestMeter


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.InvalidInput, 400),
        (errors.PayloadTooLarge, 413),
        (errors.UnsupportedMediaType, 415),
        (errors.Unauthenticated, 401),
        (errors.PermissionDenied, 403),
        (errors.NotFound, 404),
        (errors.Overloaded, 429),
        (errors.DeadlineExceeded, 504),
        (errors.Unavailable, 503),
        (errors.GatewayError, 500),
    ],
)
def test_every_error_class_has_one_status(error: type[errors.GatewayError], status: int) -> None:
    assert http_status_for(error("x")) == status


class RaisingPlane:
    """Stands in for the data plane: its classify raises the error under test."""

    def __init__(self, error: Exception, metrics: GatewayMetrics) -> None:
        self.error = error
        self.metrics = metrics

    def spec(self, name: str) -> None:
        return None

    def metric_labels(self, model: str, version: str | None) -> tuple[str, str]:
        return model, version or ""

    def meter(self, protocol, model, version, error_code) -> RequestMeter:
        return RequestMeter(self.metrics, self.metric_labels, protocol, model, version, error_code)

    async def classify(self, request: PhotoRequest):
        raise self.error


class RaisingService:
    """Stands in for the built gateway (gateway.app.Gateway) around a RaisingPlane."""

    def __init__(self, error: Exception) -> None:
        self.metrics = GatewayMetrics()
        self.plane = RaisingPlane(error, self.metrics)
        self.registry = self.monitor = self.rollout = self.repository = None
        self.idempotent_calls = IdempotentCalls()


def post(service: RaisingService, **headers: str):
    app = create_app(service, mtls=False, limits=ParseLimits(body_max_bytes=1024))
    with TestClient(app, raise_server_exceptions=False) as client:
        return client.post("/api/v1/models/m/classify", content=b"x", headers={"content-type": "image/png", **headers})


def test_overload_answers_429_with_retry_after() -> None:
    response = post(RaisingService(errors.Overloaded("queue full", retry_after_s=2.4)))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.json()["error"] == {"code": "overloaded", "message": "queue full"}


def test_deadline_answers_504_and_is_counted() -> None:
    service = RaisingService(errors.DeadlineExceeded("too late"))
    response = post(service)
    assert response.status_code == 504
    assert b'gateway_requests_total{code="504",model="m",protocol="rest",version=""} 1.0' in service.metrics.render()


def test_unexpected_exception_is_a_500_with_the_request_id_not_a_stack_trace() -> None:
    response = post(RaisingService(RuntimeError("secret internals")))
    assert response.status_code == 500
    body = response.json()
    assert body["error"]["code"] == "internal"
    assert "secret" not in response.text
    assert body["request_id"] in body["error"]["message"]


@pytest.mark.parametrize(
    ("headers", "field"),
    [({"x-request-timeout-ms": "0"}, "x-request-timeout-ms"), ({"x-priority": "high"}, "x-priority")],
)
def test_bad_timeout_or_priority_headers_are_400(headers: dict, field: str) -> None:
    response = post(RaisingService(AssertionError("must not be reached")), **headers)
    assert response.status_code == 400
    assert field in response.json()["error"]["message"]
