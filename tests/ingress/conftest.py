"""Clients shared by the ingress tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import tritonclient.grpc as triton

from tests.conftest import RunningGateway


@pytest.fixture(scope="module")
def kserve_grpc(gateway: RunningGateway) -> Iterator[triton.InferenceServerClient]:
    """Triton's own gRPC client (KServe v2) on the session gateway, with the app's certificate."""
    pki = gateway.pki
    with triton.InferenceServerClient(
        gateway.server.grpc_target,
        ssl=True,
        root_certificates=str(pki.ca_cert),
        private_key=str(pki.client_key("app")),
        certificate_chain=str(pki.client_cert("app")),
    ) as client:
        yield client
