"""The trace goes on to a real Triton: its OpenTelemetry mode (in nvidia-pytriton's tritonserver) continues
the gateway's backend span, so one trace shows the gateway's batch and Triton's own request spans."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.backends.triton_local import ServerTls, TritonServer, start_triton
from gateway.security.pki import PkiPaths
from tests.backends.conftest import write_backends
from tests.conftest import MODEL_REPO, REPO_ROOT, start_gateway, stop_gateway
from tests.otlp_collector import GrpcCollector, HttpJsonCollector, ReceivedSpan

PHOTO = (REPO_ROOT / "docs" / "examples" / "seven.jpg").read_bytes()
CALLER_TRACE, CALLER_SPAN = "5bf92f3577b34da6a3ce929d0e0e4736", "10f067aa0ba902b7"


@pytest.fixture
def traced_triton(triton_repo: Path, models_pki: PkiPaths) -> Iterator[tuple[TritonServer, HttpJsonCollector]]:
    collector = HttpJsonCollector().start()
    trace_args = [
        ("mode", "opentelemetry"),
        ("rate", "1"),
        ("level", "TIMESTAMPS"),
        ("opentelemetry,url", collector.url),
        ("opentelemetry,bsp_max_export_batch_size", "1"),
    ]
    server = start_triton(
        triton_repo,
        tls=ServerTls(models_pki.server_cert, models_pki.server_key, models_pki.ca_cert),
        extra_args=[arg for key, value in trace_args for arg in ("--trace-config", f"{key}={value}")],
    )
    try:
        yield server, collector
    finally:
        server.stop()
        collector.stop()


def wait_for(spans: list[ReceivedSpan], condition, timeout_s: float = 20) -> list[ReceivedSpan]:
    """Triton exports from its own thread: poll what arrived until ``condition`` holds."""
    deadline = time.monotonic() + timeout_s
    while not condition(spans):
        assert time.monotonic() < deadline, f"not received within {timeout_s} s: {spans}"
        time.sleep(0.1)
    return spans


def test_tritons_request_span_continues_the_gateways_backend_span(
    pki: PkiPaths, models_pki: PkiPaths, traced_triton: tuple[TritonServer, HttpJsonCollector], tmp_path: Path
) -> None:
    triton, triton_spans = traced_triton
    gateway_spans = GrpcCollector().start()
    backends = write_backends(tmp_path / "backends.toml", models_pki, "triton", [triton.grpc_target])
    gateway = start_gateway(
        pki,
        "--model-repo",
        str(MODEL_REPO),
        "--backends",
        str(backends),
        env={"GATEWAY_TRACING_OTLP_ENDPOINT": gateway_spans.endpoint},
    )
    try:
        with gateway.client("app") as client:
            answer = client.post(
                "/api/v1/models/mnist/classify",
                content=PHOTO,
                headers={"content-type": "image/jpeg", "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
            )
        assert answer.status_code == 200, answer.text
    finally:
        stop_gateway(gateway)  # flushes the gateway's spans
        gateway_spans.stop()
    (server,) = [s for s in gateway_spans.spans if s.parent_id == CALLER_SPAN]
    (batch,) = [s for s in gateway_spans.spans if (server.trace_id, server.span_id) in s.links]
    (backend,) = [s for s in gateway_spans.spans if s.parent_id == batch.span_id]
    assert backend.name == "backend" and backend.attributes["server.address"] == triton.grpc_target
    received = wait_for(triton_spans.spans, lambda spans: any(s.parent_id == backend.span_id for s in spans))
    (request,) = [s for s in received if s.parent_id == backend.span_id]
    assert request.trace_id == batch.trace_id and request.service.startswith("triton")
    assert request.name == "InferRequest"
