"""The plain-HTTP health port: probes answer without a certificate, nothing else is reachable."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.ingress.health import HealthServer
from gateway.security.pki import PkiPaths
from tests.conftest import MODEL_REPO, start_gateway, stop_gateway
from tests.redis_server import free_port


class FakeMetrics:
    def render(self) -> bytes:
        return b"gateway_up 1\n"


class FakeService:
    def __init__(self) -> None:
        self.ready = False
        self.metrics = FakeMetrics()

    def model_names(self) -> list[str]:
        return ["hotdog", "mnist"]


def test_health_port_answers_probes_and_nothing_else() -> None:
    async def scenario() -> list[tuple[int, str]]:
        service = FakeService()
        server = HealthServer(service, "127.0.0.1", 0)
        await server.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
                answers = [await client.get("/healthz"), await client.get("/readyz")]
                service.ready = True
                for path in ("/readyz", "/metrics", "/api/v1/models", "/api/v1/models/mnist/classify"):
                    answers.append(await client.get(path))
        finally:
            await server.stop()
        return [(a.status_code, a.text) for a in answers]

    answers = asyncio.run(scenario())
    assert answers[0] == (200, '{"status":"live"}')
    assert answers[1][0] == 503 and '"not ready"' in answers[1][1]
    assert answers[2][0] == 200 and '"models":["hotdog","mnist"]' in answers[2][1]
    assert answers[3] == (200, "gateway_up 1\n")
    assert answers[4][0] == 404 and answers[5][0] == 404


def test_a_gateway_with_a_health_port_serves_probes_without_a_certificate(pki: PkiPaths) -> None:
    port = free_port()
    gateway = start_gateway(pki, "--model-repo", str(MODEL_REPO), env={"GATEWAY_SERVER_HEALTH_PORT": str(port)})
    try:
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz")
        refused = httpx.get(f"http://127.0.0.1:{port}/api/v1/models")
        with gateway.client(identity=None) as no_certificate, pytest.raises(httpx.TransportError):
            no_certificate.get("/readyz")  # the main port still demands a client certificate
    finally:
        stop_gateway(gateway)
    assert ready.status_code == 200 and ready.json()["models"] == ["hotdog", "mnist"]
    assert refused.status_code == 404
