"""`gateway bench observability`: what the request log and tracing cost per request, measured side by side.

Starts the gateway once per variant on free loopback ports with mTLS (the only difference is the
``GATEWAY_LOGGING_*`` / ``GATEWAY_TRACING_*`` environment), drives each with the same closed loop of
HTTPS clients uploading PNG photos of digits, and reports the gateway process's CPU time per answered
request and its throughput, each as a ratio to the first variant (no request log, no tracing). Tracing
exports over OTLP/gRPC to a collector endpoint in this process that counts the spans it receives.
The variants run in rounds (ABCD ABCD ...) so that a noisy neighbour hits them alike; the last line is
one JSON object for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from concurrent import futures
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from gateway.bench.batching import DEFAULT_DIGITS, RunResult, make_photos, measure
from gateway.bench.server_process import start_gateway
from gateway.net import free_port
from gateway.security.pki import PkiPaths, init_pki


class SpanCounter(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace endpoint that keeps only the number of spans it was sent."""

    def __init__(self) -> None:
        self.spans = 0

    def Export(self, request, context):  # noqa: N802 - the proto's name
        self.spans += sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def variants(otlp_endpoint: str) -> dict[str, dict[str, str]]:
    return {
        "no request log": {"GATEWAY_LOGGING_REQUESTS": "false"},
        "text request log": {"GATEWAY_LOGGING_REQUESTS": "true"},
        "json request log": {"GATEWAY_LOGGING_REQUESTS": "true", "GATEWAY_LOGGING_FORMAT": "json"},
        "tracing on (+json log)": {
            "GATEWAY_LOGGING_REQUESTS": "true",
            "GATEWAY_LOGGING_FORMAT": "json",
            "GATEWAY_TRACING_OTLP_ENDPOINT": otlp_endpoint,
        },
        "tracing 5% sampled": {
            "GATEWAY_LOGGING_REQUESTS": "true",
            "GATEWAY_LOGGING_FORMAT": "json",
            "GATEWAY_TRACING_OTLP_ENDPOINT": otlp_endpoint,
            "GATEWAY_TRACING_SAMPLE_RATIO": "0.05",
        },
    }


def run_variant(pki: PkiPaths, args: argparse.Namespace, env: dict[str, str], photos: list[bytes]) -> RunResult:
    server = start_gateway(["--pki-dir", str(pki.root), "--model-repo", str(args.model_repo)], env=env)
    try:
        cpu_before = server.cpu_seconds()
        result = asyncio.run(
            measure(server.base_url, pki, args.model, photos, args.clients, args.warmup, args.duration)
        )
        result.server_cpu_ms_per_request = 1000 * (server.cpu_seconds() - cpu_before) / max(result.answered, 1)
        return result
    finally:
        server.stop()


def main(args: argparse.Namespace) -> int:
    photos = make_photos(args.digits, 64, args.photo_side)
    collector = SpanCounter()
    sink = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, sink)
    port = free_port()
    sink.add_insecure_port(f"127.0.0.1:{port}")
    sink.start()
    runs: dict[str, list[RunResult]] = {}
    answered_traced = spans_all_sampled = 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pki = init_pki(Path(tmp) / "pki")
            print(
                f"model {args.model}: {args.clients} concurrent HTTPS clients, {args.duration:.0f} s per run, "
                f"{args.rounds} round(s)",
                flush=True,
            )
            for _ in range(args.rounds):
                for name, env in variants(f"http://127.0.0.1:{port}").items():
                    before = collector.spans
                    result = run_variant(pki, args, env, photos)  # the gateway flushes its spans as it stops
                    runs.setdefault(name, []).append(result)
                    if name == "tracing on (+json log)":
                        answered_traced += result.answered
                        spans_all_sampled += collector.spans - before
    finally:
        sink.stop(None)
    base_cpu = statistics.median(r.server_cpu_ms_per_request for r in runs["no request log"])
    base_rps = statistics.median(r.rps for r in runs["no request log"])
    print(f"{'':<26}{'req/s':>9}{'p99 ms':>9}{'CPU ms/req':>12}{'CPU ratio':>11}{'req/s ratio':>13}{'errors':>8}")
    summary = {}
    for name, results in runs.items():
        cpu = statistics.median(r.server_cpu_ms_per_request for r in results)
        rps = statistics.median(r.rps for r in results)
        p99 = statistics.median(r.p99_ms for r in results)
        errors = sum(r.errors for r in results)
        print(f"{name:<26}{rps:>9.0f}{p99:>9.1f}{cpu:>12.3f}{cpu / base_cpu:>11.3f}{rps / base_rps:>13.3f}{errors:>8}")
        summary[name] = {
            "rps": round(rps, 1),
            "cpu_ms_per_request": round(cpu, 4),
            "cpu_ratio": round(cpu / base_cpu, 4),
        }
    spans_per_request = spans_all_sampled / answered_traced if answered_traced else 0.0
    print(f"spans received with every request sampled: {spans_per_request:.2f} per request")
    summary["spans_per_traced_request"] = round(spans_per_request, 3)
    print(json.dumps(summary))
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "observability", help="CPU per request and throughput with the request log and tracing off and on"
    )
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--model-repo", type=Path, default=Path("model_repo"))
    parser.add_argument("--digits", type=Path, default=DEFAULT_DIGITS)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--photo-side", type=int, default=160, help="short side of the PNG photos sent")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2, help="every variant runs once per round")
    parser.set_defaults(handler=main)
