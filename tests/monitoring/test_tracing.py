"""The tracing module on its own: off is nothing; on, the gRPC interceptor and FastAPI continue a caller's
trace, batches link their requests, the context goes on to an upstream, and OTLP reaches a real gRPC
collector endpoint (a TraceService server from opentelemetry-proto)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from concurrent import futures

import grpc
import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.config import TracingSettings
from gateway.monitoring import event_log, tracing
from gateway.monitoring.tracing import TRACING, TracingInterceptor, build_tracing, fastapi_telemetry
from gateway.net import free_port

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(exporter: InMemorySpanExporter) -> tracing.Tracing:
    on = build_tracing(TracingSettings(), exporter)
    yield on
    tracing.deactivate()
    on.shutdown()


def test_off_by_default_is_inert() -> None:
    off = build_tracing(TracingSettings())
    assert not off.on and off.provider is None and not TRACING.on
    assert off.span("prepare") is off.span("log write")  # one shared no-op context: no span object
    with off.span("prepare"):
        assert off.trace_id() is None and off.current() is None
    assert fastapi_telemetry(off) == {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}


def test_a_grpc_call_continues_the_callers_trace(traced: tracing.Tracing, exporter: InMemorySpanExporter) -> None:
    seen: dict[str, object] = {}

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen["trace_id"] = traced.trace_id()
        with traced.span("prepare"):
            seen["upstream"] = dict(traced.inject([("x-other", "1")]))
        return request

    async def scenario() -> bytes:
        server = grpc.aio.server(interceptors=[TracingInterceptor(traced)])
        handler = grpc.method_handlers_generic_handler("test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(echo)})
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await channel.unary_unary("/test.Echo/Say")(b"hi", metadata=(("traceparent", TRACEPARENT),))
        finally:
            await server.stop(None)

    assert asyncio.run(scenario()) == b"hi"
    prepare, call = exporter.get_finished_spans()
    assert call.name == "test.Echo/Say" and call.kind == SpanKind.SERVER
    assert format(call.context.trace_id, "032x") == CALLER_TRACE
    assert format(call.parent.span_id, "016x") == CALLER_SPAN and call.parent.is_remote
    assert call.attributes["rpc.method"] == "Say" and call.attributes["rpc.service"] == "test.Echo"
    assert prepare.parent.span_id == call.context.span_id
    assert seen["trace_id"] == CALLER_TRACE
    upstream = seen["upstream"]
    assert upstream["x-other"] == "1"
    assert upstream["traceparent"] == f"00-{CALLER_TRACE}-{format(prepare.context.span_id, '016x')}-01"


def test_fastapi_on_our_provider_continues_a_rest_callers_trace(
    traced: tracing.Tracing, exporter: InMemorySpanExporter
) -> None:
    app = FastAPI(telemetry=fastapi_telemetry(traced))

    @app.post("/api/v1/models/{model}/classify")
    async def classify(model: str) -> dict:
        return {"trace_id": traced.trace_id()}

    async def scenario() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            return await client.post("/api/v1/models/mnist/classify", headers={"traceparent": TRACEPARENT})

    assert asyncio.run(scenario()).json() == {"trace_id": CALLER_TRACE}
    (span,) = exporter.get_finished_spans()
    assert span.name == "POST /api/v1/models/{model}/classify" and span.kind == SpanKind.SERVER
    assert format(span.parent.span_id, "016x") == CALLER_SPAN


def test_a_batch_links_every_request_and_each_request_records_its_queue_wait(
    traced: tracing.Tracing, exporter: InMemorySpanExporter
) -> None:
    requests = []
    for name in ("a", "b", "c"):
        with traced.span(f"request {name}"):
            requests.append((traced.current(), tracing.now_ns()))
    started = tracing.now_ns()
    contexts = [context for context, _ in requests] + [None]  # an untraced request in the batch: no link
    with traced.batch_span("batch mnist/2", contexts, size=4) as batch, traced.span("backend triton", SpanKind.CLIENT):
        upstream = dict(traced.inject())
    for context, submitted in requests:
        traced.queue_wait(context, submitted, started, batch.get_span_context())
    spans = {span.name: span for span in exporter.get_finished_spans()}
    batch_span, backend = spans["batch mnist/2"], spans["backend triton"]
    assert batch_span.parent is None  # its own trace: it serves three
    assert {link.context.span_id for link in batch_span.links} == {c.span_id for c, _ in requests}
    assert batch_span.attributes["gateway.batch.size"] == 4
    assert backend.parent.span_id == batch_span.context.span_id and backend.kind == SpanKind.CLIENT
    assert upstream["traceparent"].split("-")[1:3] == [
        format(batch_span.context.trace_id, "032x"),
        format(backend.context.span_id, "016x"),
    ]
    waits = [span for span in exporter.get_finished_spans() if span.name == "queue wait"]
    assert sorted(w.parent.span_id for w in waits) == sorted(c.span_id for c, _ in requests)
    assert all(w.end_time == started and w.start_time <= started for w in waits)
    assert all(w.links[0].context.span_id == batch_span.context.span_id for w in waits)


def test_log_lines_carry_the_trace_id_while_tracing_is_active(traced: tracing.Tracing) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(event_log.JsonFormatter())
    logger = logging.getLogger("gateway.test_tracing")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        tracing.activate(traced)
        with traced.span("request"):
            logger.info("inside")
            inside = traced.trace_id()
        logger.info("outside")
        tracing.deactivate()
        with traced.span("request"):
            logger.info("inactive")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line.get("trace_id") for line in lines] == [inside, None, None]


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request, context):  # noqa: N802 - the proto's name
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_the_otlp_exporter_delivers_spans_to_a_collector_endpoint() -> None:
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        otlp = build_tracing(TracingSettings(otlp_endpoint=f"http://127.0.0.1:{port}", service_name="gw-test"))
        assert otlp.on
        with otlp.span("request"):
            trace_id = otlp.trace_id()
        otlp.shutdown()  # flushes the batch processor
    finally:
        server.stop(None)
    spans = [
        (span, resource)
        for request in collector.requests
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert [(span.name, span.trace_id.hex()) for span, _ in spans] == [("request", trace_id)]
    attributes = {a.key: a.value.string_value for a in spans[0][1].resource.attributes}
    assert attributes["service.name"] == "gw-test"
