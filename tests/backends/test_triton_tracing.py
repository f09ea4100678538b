"""The trace goes on to a real Triton: its OpenTelemetry mode (in nvidia-pytriton's tritonserver) continues
the gateway's backend span, so one trace shows the gateway's batch and Triton's own request spans.

Triton drops some propagated contexts over gRPC, and such a request starts a trace of its own: its
``GrpcServerCarrier::Get`` (src/grpc/infer_handler.h, 2.51 as in nvidia-pytriton 0.7.0, unchanged on Triton's
main) returns the metadata value's ``data()`` as a C string, so strlen finds its length. gRPC keeps the 55
characters in a heap block with one stale byte after them (seen under gdb); when that byte is not NUL the
traceparent reads as 56 characters or more and the W3C parser rejects it. Direct calls carrying a valid
traceparent lost from 1 in 200 to 1 in 8 over plaintext (runs of 30 to 200 calls) and 3 in 400 over mTLS,
sometimes several in a row; the one-request test failed in one of two full-suite runs. The gateway's own side
is exact: the fake server below sees every traceparent whole."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.backends.triton import TritonModel
from gateway.backends.triton_local import ServerTls, TritonServer, start_triton
from gateway.config import TracingSettings
from gateway.monitoring import tracing
from gateway.monitoring.tracing import TRACING, build_tracing
from gateway.security.pki import PkiPaths
from tests.backends.conftest import write_backends
from tests.backends.fake_kserve import fake_kserve
from tests.conftest import MODEL_REPO, REPO_ROOT, start_gateway, stop_gateway
from tests.otlp_collector import GrpcCollector, HttpJsonCollector, ReceivedSpan

PHOTO = (REPO_ROOT / "docs" / "examples" / "seven.jpg").read_bytes()
CALLER_TRACE = "5bf92f3577b34da6a3ce929d0e0e4736"
REQUESTS = 8
"""Calls through the gateway: Triton loses a few contexts in a hundred, so one call alone made a flaky test."""


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


def test_tritons_request_spans_continue_the_gateways_backend_spans(
    pki: PkiPaths, models_pki: PkiPaths, traced_triton: tuple[TritonServer, HttpJsonCollector], tmp_path: Path
) -> None:
    """Of REQUESTS calls, Triton continues the gateway's backend span in at least one, and a request whose
    context it loses starts a root trace, never one with a wrong parent."""
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
    callers = [f"{n:016x}" for n in range(1, REQUESTS + 1)]
    try:
        with gateway.client("app") as client:
            for caller in callers:  # one after the other: each is a batch of its own
                answer = client.post(
                    "/api/v1/models/mnist/classify",
                    content=PHOTO,
                    headers={"content-type": "image/jpeg", "traceparent": f"00-{CALLER_TRACE}-{caller}-01"},
                )
                assert answer.status_code == 200, answer.text
    finally:
        stop_gateway(gateway)  # flushes the gateway's spans
        gateway_spans.stop()
    backend_traces = {}  # the gateway's backend span id -> its trace id (the batch's)
    for caller in callers:
        (server,) = [s for s in gateway_spans.spans if s.parent_id == caller]
        (batch,) = [s for s in gateway_spans.spans if (server.trace_id, server.span_id) in s.links]
        (backend,) = [s for s in gateway_spans.spans if s.parent_id == batch.span_id]
        assert backend.name == "backend" and backend.attributes["server.address"] == triton.grpc_target
        backend_traces[backend.span_id] = backend.trace_id
    received = wait_for(triton_spans.spans, lambda spans: sum(s.name == "InferRequest" for s in spans) >= REQUESTS)
    requests = [s for s in received if s.name == "InferRequest"]
    assert len(requests) == REQUESTS and all(s.service.startswith("triton") for s in requests), requests
    continued = [s for s in requests if s.parent_id in backend_traces]
    assert continued, f"no Triton request span continues a backend span of the gateway's {backend_traces}: {requests}"
    assert all(s.trace_id == backend_traces[s.parent_id] for s in continued), continued
    assert all(s.parent_id is None for s in requests if s not in continued), requests


async def infer_on_a_fake_triton(calls: int) -> list[dict[str, str]]:
    """``calls`` TritonModel.infer calls, each inside its own backend span; the metadata each call came with."""
    async with fake_kserve() as fake:
        model = TritonModel(fake.endpoint, "mnist", "1", "image", "probabilities")
        try:
            for _ in range(calls):
                with TRACING.span("backend", SpanKind.CLIENT):
                    await model.infer(np.zeros((1, 1, 28, 28), np.float32))
        finally:
            await model.close()
    return fake.metadata


def test_every_triton_call_carries_the_traceparent_of_its_backend_span_whole() -> None:
    """The gateway's side, exactly: what the module docstring says Triton sometimes misreads is well formed."""
    exporter = InMemorySpanExporter()
    on = build_tracing(TracingSettings(), exporter)
    tracing.activate(on)
    try:
        seen = asyncio.run(infer_on_a_fake_triton(calls=3))
    finally:
        tracing.deactivate()
        on.shutdown()
    spans = [span.get_span_context() for span in exporter.get_finished_spans() if span.name == "backend"]
    assert len(spans) == 3
    expected = [f"00-{s.trace_id:032x}-{s.span_id:016x}-{s.trace_flags:02x}" for s in spans]
    assert [m.get("traceparent") for m in seen] == expected and all(len(t) == 55 for t in expected)
