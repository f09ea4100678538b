"""OTLP trace endpoints for tests: gRPC (what the gateway's exporter speaks) and HTTP/JSON (what Triton's
OpenTelemetry mode sends), both keeping every span they receive in a flat, comparable form."""

from __future__ import annotations

import json
import threading
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

from gateway.net import free_port


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    kind: int
    service: str
    attributes: dict = field(hash=False)
    links: tuple[tuple[str, str], ...] = ()


def _value(value: common_pb2.AnyValue) -> object:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


class GrpcCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace endpoint on a free loopback port (``endpoint`` is what the exporter is given)."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        port = free_port()
        self._server.add_insecure_port(f"127.0.0.1:{port}")
        self.endpoint = f"http://127.0.0.1:{port}"

    def Export(self, request, context):  # noqa: N802 - the proto's name
        for resource in request.resource_spans:
            service = next((a.value.string_value for a in resource.resource.attributes if a.key == "service.name"), "")
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.spans.append(
                        ReceivedSpan(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex() or None,
                            kind=span.kind,
                            service=service,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                        )
                    )
        return trace_service_pb2.ExportTraceServiceResponse()

    def start(self) -> GrpcCollector:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(None)


class HttpJsonCollector:
    """An OTLP/HTTP endpoint taking JSON (``url`` ends in /v1/traces), as Triton's OpenTelemetry mode sends."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                collector._keep(body)
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/v1/traces"

    def _keep(self, body: dict) -> None:
        for resource in body.get("resourceSpans", []):
            attributes = {a["key"]: a["value"] for a in resource.get("resource", {}).get("attributes", [])}
            service = attributes.get("service.name", {}).get("stringValue", "")
            for scope in resource.get("scopeSpans", []):
                for span in scope.get("spans", []):
                    self.spans.append(
                        ReceivedSpan(
                            name=span["name"],
                            trace_id=span["traceId"],
                            span_id=span["spanId"],
                            parent_id=span.get("parentSpanId") or None,
                            kind=span.get("kind", 0),
                            service=service,
                            attributes={},
                        )
                    )

    def start(self) -> HttpJsonCollector:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
