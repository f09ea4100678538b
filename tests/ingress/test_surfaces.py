"""Each HTTP surface is its own application with its own error shape; none is chosen by URL prefix."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from gateway.app import build_gateway
from gateway.config import load_settings
from gateway.core.limits import ParseLimits
from gateway.ingress.rest import create_app
from tests.conftest import MODEL_REPO


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = load_settings(overrides={"tls": {"enabled": False}, "models": {"repo": MODEL_REPO}}, environ={})
    gateway = build_gateway(settings)
    with TestClient(create_app(gateway, mtls=False, limits=ParseLimits(body_max_bytes=1024))) as test_client:
        yield test_client
    gateway.preprocess_pool.shutdown()


def test_the_bare_kserve_prefix_is_its_server_metadata_not_a_redirect(client: TestClient) -> None:
    answer = client.get("/v2", follow_redirects=False)
    assert answer.status_code == 200 and answer.json()["name"] == "image-gateway"
    assert client.get("/v2/health/live").status_code == 200


@pytest.mark.parametrize(
    "path", ["/v2/models/cifar", "/v2/no/such/route", "/v1/models/cifar", "/v1/models/mnist/versions/9"]
)
def test_kserve_and_tfserving_errors_are_plain(client: TestClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 404
    assert isinstance(answer.json()["error"], str) and set(answer.json()) == {"error"}
    assert answer.headers["x-gateway-error-code"] == "not_found"


@pytest.mark.parametrize("path", ["/api/v1/models/cifar", "/api/v1/no/such/route", "/v2x"])
def test_the_gateway_api_answers_errors_in_its_own_shape(client: TestClient, path: str) -> None:
    body = client.get(path).json()
    assert body["error"]["code"] == "not_found" and body["request_id"]


def test_a_kserve_infer_body_that_is_too_large_is_refused_in_the_kserve_shape(client: TestClient) -> None:
    answer = client.post("/v2/models/mnist/infer", content=b"x" * 2048)
    assert answer.status_code == 413 and "limit" in answer.json()["error"]
