"""Clients shared by the ingress tests."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http

from tests.conftest import RunningGateway


def triton_grpc_client(gateway: RunningGateway, identity: str = "app") -> triton.InferenceServerClient:
    """Triton's own gRPC client (KServe v2) on ``gateway``, presenting ``identity``'s certificate."""
    pki = gateway.pki
    return triton.InferenceServerClient(
        gateway.server.grpc_target,
        ssl=True,
        root_certificates=str(pki.ca_cert),
        private_key=str(pki.client_key(identity)),
        certificate_chain=str(pki.client_cert(identity)),
    )


def triton_http_client(gateway: RunningGateway, identity: str = "app") -> triton_http.InferenceServerClient:
    """Triton's own HTTP client on ``gateway``, presenting ``identity``'s certificate."""
    pki = gateway.pki
    options = {
        "keyfile": str(pki.client_key(identity)),
        "certfile": str(pki.client_cert(identity)),
        "ca_certs": str(pki.ca_cert),
    }
    return triton_http.InferenceServerClient(urlsplit(gateway.base_url).netloc, ssl=True, ssl_options=options)


@pytest.fixture(scope="module")
def kserve_grpc(gateway: RunningGateway) -> Iterator[triton.InferenceServerClient]:
    """Triton's own gRPC client (KServe v2) on the session gateway, with the app's certificate."""
    with triton_grpc_client(gateway) as client:
        yield client
