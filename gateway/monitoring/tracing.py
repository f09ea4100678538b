"""OpenTelemetry traces of the request path: off by default, and then free.

Off (no ``[tracing] otlp_endpoint``), ``TRACING.on`` is False: hooks on the request path test it
first, and ``TRACING.span(...)`` is one shared no-op context; no span object is made and no context is
looked up. On, one request is

    POST /api/v1/models/{model}/classify   SERVER; continues the caller's W3C traceparent (REST header or
      |                                    gRPC metadata); attributes: protocol, model, version, code
      +- prepare                           decoding and preprocessing the photo
      +- queue wait                        from submit to the start of its batch
      +- log write                         handing the record to the prediction log

and each batch is its own span, linked to the span of every request in it (a batch serves many traces):

    batch mnist/2                          INTERNAL; one link per request; attribute: batch size
      +- backend triton                    CLIENT; its traceparent goes to Triton / TF Serving with the call

The trace id is in every log line written while a span is current, and in error bodies.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.config import TracingSettings

if TYPE_CHECKING:  # the SDK is imported only when tracing is switched on
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

TRACEPARENT = "traceparent"
SERVER_ERROR_CODES = frozenset({"INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "UNKNOWN", "DATA_LOSS"})
"""Codes that mark the gateway's span as failed (with every 5xx); a client's bad request does not."""
_PROPAGATOR = TraceContextTextMapPropagator()
_NO_SPAN = contextlib.nullcontext()


def is_server_error(code: str) -> bool:
    return code in SERVER_ERROR_CODES or (len(code) == 3 and code.startswith("5"))


class Tracing:
    """The process's tracer, or nothing (``on`` False): callers test ``on`` before every other call."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.use(provider)

    def use(self, provider: TracerProvider | None) -> None:
        """Trace with ``provider`` from now on (None: off)."""
        self.provider = provider
        self.on = provider is not None
        self._tracer = provider.get_tracer("gateway") if provider is not None else None

    # -- the request's span, at the transport -----------------------------------------------------------

    @contextlib.contextmanager
    def server_span(self, name: str, carrier: Mapping[str, str], attributes: Mapping[str, Any]) -> Iterator[Span]:
        """The request's SERVER span, current inside the block, continuing ``carrier``'s traceparent if any."""
        parent = _PROPAGATOR.extract(carrier)
        with self._tracer.start_as_current_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=True,
            set_status_on_exception=True,
        ) as span:
            yield span

    @staticmethod
    def annotate(protocol: str, model: str, version: str | None, code: str) -> None:
        """Name the answered request on its span (the data plane knows these, the transport does not)."""
        span = trace.get_current_span()
        span.set_attributes({"gateway.protocol": protocol, "gateway.model": model, "gateway.code": code})
        if version:
            span.set_attribute("gateway.version", version)
        if is_server_error(code):
            span.set_status(Status(StatusCode.ERROR, code))

    # -- spans inside the request ----------------------------------------------------------------------

    def span(
        self, name: str, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any
    ) -> contextlib.AbstractContextManager:
        """A child of the current span, current inside the block; off, the shared no-op context."""
        if self._tracer is None:
            return _NO_SPAN
        return self._tracer.start_as_current_span(name, kind=kind, attributes=attributes or None)

    @staticmethod
    def current() -> SpanContext | None:
        """The current span's context (kept by a queued request, for its batch's link and its queue span)."""
        context = trace.get_current_span().get_span_context()
        return context if context.is_valid else None

    def queue_wait(self, request: SpanContext, submitted_ns: int, started_ns: int, batch: SpanContext | None) -> None:
        """Record the time a request waited for its batch, under the request's span, after the fact."""
        parent = trace.set_span_in_context(trace.NonRecordingSpan(request))
        links = [Link(batch)] if batch is not None else None
        span = self._tracer.start_span("queue wait", context=parent, start_time=submitted_ns, links=links)
        span.end(end_time=started_ns)

    def batch_span(
        self, name: str, requests: Iterable[SpanContext | None], size: int
    ) -> contextlib.AbstractContextManager:
        """One span per executed batch: a root of its own, linked to the span of every traced request in it."""
        links = [Link(context) for context in requests if context is not None]
        return self._tracer.start_as_current_span(
            name, context=otel_context.Context(), links=links, attributes={"gateway.batch.size": size}
        )

    # -- propagation and ids ---------------------------------------------------------------------------

    @staticmethod
    def inject(metadata: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
        """``metadata`` plus the current span's traceparent: what an upstream call (Triton, TF Serving) sends."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return [*metadata, *carrier.items()]

    @staticmethod
    def trace_id() -> str | None:
        """The current trace id (32 hex digits), None outside a span."""
        context = trace.get_current_span().get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else None

    def shutdown(self) -> None:
        """Export what is still buffered, then stop."""
        if self.provider is not None:
            self.provider.shutdown()


TRACING = Tracing()
"""The process's tracing, read by the request path (``if TRACING.on:``); switched on at start by ``activate``."""


def now_ns() -> int:
    return time.time_ns()


def traced(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` (plain or async) run inside a span named ``name``. Wrap at start-up, when tracing is on:
    unwrapped, a call costs nothing extra."""
    if inspect.iscoroutinefunction(function):

        async def run_async(*args: Any, **kwargs: Any) -> Any:
            with TRACING.span(name):
                return await function(*args, **kwargs)

        return functools.wraps(function)(run_async)

    def run(*args: Any, **kwargs: Any) -> Any:
        with TRACING.span(name):
            return function(*args, **kwargs)

    return functools.wraps(function)(run)


def build_tracing(settings: TracingSettings, exporter: SpanExporter | None = None) -> Tracing:
    """Tracing as configured: off without an OTLP endpoint (unless ``exporter`` is given, as tests do).

    The OTLP exporter sends in batches from a background thread; a given ``exporter`` gets every span
    as it ends (SimpleSpanProcessor), so a test sees it at once.
    """
    if not settings.otlp_endpoint and exporter is None:
        return Tracing()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    resource = Resource.create(
        {
            "service.name": settings.service_name,
            "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
        }
    )
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        endpoint = settings.otlp_endpoint
        otlp = OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
        provider.add_span_processor(BatchSpanProcessor(otlp))
    return Tracing(provider)


def activate(tracing: Tracing) -> None:
    """Make ``tracing`` the process's (the request path reads ``TRACING``); log lines get its trace ids."""
    from gateway.monitoring.event_log import set_trace_id_source

    TRACING.use(tracing.provider)
    set_trace_id_source(TRACING.trace_id if TRACING.on else lambda: None)


def deactivate() -> None:
    activate(Tracing())


# -- the transports: a SERVER span around every request, only when tracing is on ---------------------------


def fastapi_telemetry(tracing: Tracing) -> dict[str, Any]:
    """FastAPI's own telemetry (its SERVER span per HTTP request continues a W3C traceparent) on our
    provider when tracing is on; all of it off otherwise, so that an untraced request pays nothing for it."""
    if not tracing.on:
        return {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
    return {"tracer_provider": tracing.provider, "metrics": False, "logs": False, "operation_spans": False}


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """grpc.aio: every unary call runs inside its SERVER span (named by the full method)."""

    def __init__(self, tracing: Tracing) -> None:
        self._tracing = tracing

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]], details: Any
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        tracing, behaviour, method = self._tracing, handler.unary_unary, details.method
        carrier = dict(details.invocation_metadata or ())
        service, _, name = method.lstrip("/").rpartition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}

        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with tracing.server_span(method.lstrip("/"), carrier, attributes) as span:
                try:
                    return await behaviour(request, context)
                finally:
                    code = context.code()
                    if code is not None:
                        span.set_attribute("rpc.grpc.status_code", code.value[0])

        return grpc.unary_unary_rpc_method_handler(
            traced, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
