"""Tracing through a live gateway: the span tree of a REST photo, a gRPC Classify and a KServe call, each
continuing the caller's W3C traceparent, exported over OTLP/gRPC to a collector endpoint in this process;
the trace id in error bodies, gRPC trailers and JSON log lines; none of it when tracing is off."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from gateway.security.pki import PkiPaths
from gateway.v1 import classifier_pb2, classifier_pb2_grpc
from tests.conftest import MODEL_REPO, REPO_ROOT, RunningGateway, start_gateway, stop_gateway
from tests.otlp_collector import GrpcCollector, ReceivedSpan

PHOTO = (REPO_ROOT / "docs" / "examples" / "seven.jpg").read_bytes()
SERVER, CLIENT = 2, 3  # OTLP span kinds


def traceparent(n: int) -> tuple[str, str, str]:
    """(header, trace id, parent span id) of a caller's trace."""
    trace_id, span_id = f"{n:032x}".replace("0", "a", 8), f"{n:016x}".replace("0", "b", 4)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


@dataclass
class Traced:
    gateway: RunningGateway
    collector: GrpcCollector


@pytest.fixture(scope="module")
def run(pki: PkiPaths) -> Iterator[Traced]:
    collector = GrpcCollector().start()
    gateway = start_gateway(
        pki,
        "--model-repo",
        str(MODEL_REPO),
        env={"GATEWAY_TRACING_OTLP_ENDPOINT": collector.endpoint, "GATEWAY_LOGGING_FORMAT": "json"},
    )
    try:
        yield Traced(gateway, collector)
    finally:
        stop_gateway(gateway)
        collector.stop()


def finished(run: Traced) -> list[ReceivedSpan]:
    """Stop the gateway (its exporter flushes on the way out) and return every span it sent."""
    stop_gateway(run.gateway)
    return run.collector.spans


@pytest.fixture(scope="module")
def traffic(run: Traced) -> dict:
    """One REST photo, one broken REST photo, one gRPC Classify and one KServe ModelInfer, each traced by its caller."""
    calls: dict = {}
    with run.gateway.client("app") as client:
        header, trace_id, parent = traceparent(1)
        answer = client.post(
            "/api/v1/models/mnist/classify",
            content=PHOTO,
            headers={"content-type": "image/jpeg", "traceparent": header},
        )
        assert answer.status_code == 200
        calls["rest"] = (trace_id, parent, answer)
        header, trace_id, parent = traceparent(2)
        broken = client.post(
            "/api/v1/models/mnist/classify",
            content=PHOTO[:300],
            headers={"content-type": "image/jpeg", "traceparent": header},
        )
        calls["broken"] = (trace_id, parent, broken)
        calls["untraced"] = client.post(
            "/api/v1/models/mnist/classify", content=PHOTO[:300], headers={"content-type": "image/jpeg"}
        )
    header, trace_id, parent = traceparent(3)
    calls["grpc"] = (trace_id, parent)
    with run.gateway.grpc_channel("app") as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        stub.Classify(
            classifier_pb2.ClassifyRequest(model="mnist", image=PHOTO), timeout=30, metadata=(("traceparent", header),)
        )
        header, trace_id, _ = traceparent(6)
        with pytest.raises(grpc.RpcError) as failed:
            stub.Classify(
                classifier_pb2.ClassifyRequest(model="nope", image=PHOTO),
                timeout=30,
                metadata=(("traceparent", header),),
            )
        calls["grpc_error"] = (trace_id, failed.value)
    header, trace_id, parent = traceparent(4)
    pki = run.gateway.pki
    with triton.InferenceServerClient(
        run.gateway.server.grpc_target,
        ssl=True,
        root_certificates=str(pki.ca_cert),
        private_key=str(pki.client_key("app")),
        certificate_chain=str(pki.client_cert("app")),
    ) as kserve:
        tensor = triton.InferInput("image", [2, 1, 28, 28], "FP32")
        tensor.set_data_from_numpy(np.zeros((2, 1, 28, 28), np.float32))
        kserve.infer("mnist", [tensor], headers={"traceparent": header})
    calls["kserve"] = (trace_id, parent)
    calls["spans"] = finished(run)
    return calls


def _tree(spans: list[ReceivedSpan], trace_id: str, parent: str) -> tuple[ReceivedSpan, list[ReceivedSpan]]:
    """The gateway's SERVER span continuing (trace_id, parent), and its children."""
    (server,) = [s for s in spans if s.trace_id == trace_id and s.parent_id == parent]
    assert server.kind == SERVER and server.service == "image-gateway"
    return server, [s for s in spans if s.parent_id == server.span_id]


def _batches_of(spans: list[ReceivedSpan], server: ReceivedSpan) -> list[ReceivedSpan]:
    return [s for s in spans if (server.trace_id, server.span_id) in s.links]


@pytest.mark.parametrize(
    "call, name, protocol",
    [
        ("rest", "POST /api/v1/models/{model}/classify", "rest"),
        ("grpc", "gateway.v1.Classifier/Classify", "grpc"),
    ],
)
def test_a_photo_request_is_one_span_with_prepare_queue_wait_and_log_write(
    traffic: dict, call: str, name: str, protocol: str
) -> None:
    spans = traffic["spans"]
    server, children = _tree(spans, *traffic[call][:2])
    assert server.name == name
    assert server.attributes["gateway.protocol"] == protocol and server.attributes["gateway.model"] == "mnist"
    assert server.attributes["gateway.code"] in ("200", "OK") and server.attributes["gateway.version"]
    assert sorted(c.name for c in children) == ["log write", "prepare", "queue wait"]
    (batch,) = _batches_of(spans, server)
    assert batch.name == f"batch mnist/{server.attributes['gateway.version']}" and batch.parent_id is None
    (wait,) = [c for c in children if c.name == "queue wait"]
    assert (batch.trace_id, batch.span_id) in wait.links
    backend = [s for s in spans if s.parent_id == batch.span_id]
    assert [s.name for s in backend] == ["backend onnxruntime"]


def test_a_kserve_call_traces_each_row_into_its_batch(traffic: dict) -> None:
    spans = traffic["spans"]
    server, children = _tree(spans, *traffic["kserve"])
    assert server.name == "inference.GRPCInferenceService/ModelInfer"
    assert server.attributes["gateway.protocol"] == "kserve-grpc"
    waits = [c for c in children if c.name == "queue wait"]
    assert len(waits) == 2 and not [c for c in children if c.name == "prepare"]  # tensors: nothing to decode
    batches = {(b.trace_id, b.span_id) for b in _batches_of(spans, server)}
    assert batches and all(set(w.links) <= batches for w in waits)  # each row waited for a batch linked to it


def test_the_error_body_and_the_log_line_carry_the_trace_id(traffic: dict, run: Traced) -> None:
    trace_id, parent, broken = traffic["broken"]
    assert broken.status_code == 400 and broken.json()["trace_id"] == trace_id
    server, _ = _tree(traffic["spans"], trace_id, parent)
    assert server.attributes["gateway.code"] == "400"
    untraced = traffic["untraced"].json()["trace_id"]
    assert len(untraced) == 32 and untraced not in {trace_id, traffic["rest"][0]}  # a new trace of its own
    lines = [json.loads(line) for line in "".join(run.gateway.output).splitlines() if line.strip()]
    request_lines = {line["request_id"]: line for line in lines if line["logger"] == "gateway.requests"}
    assert request_lines[broken.headers["x-request-id"]]["trace_id"] == trace_id
    rest_answer = traffic["rest"][2]
    assert request_lines[rest_answer.headers["x-request-id"]]["trace_id"] == traffic["rest"][0]
    grpc_trace, grpc_error = traffic["grpc_error"]
    assert grpc_error.code() == grpc.StatusCode.NOT_FOUND
    assert dict(grpc_error.trailing_metadata())["trace-id"] == grpc_trace


def test_off_by_default_no_trace_id_is_answered(pki: PkiPaths) -> None:
    gateway = start_gateway(pki, "--model-repo", str(MODEL_REPO))
    try:
        with gateway.client("app") as client:
            header, _, _ = traceparent(5)
            refused = client.post(
                "/api/v1/models/mnist/classify",
                content=PHOTO[:300],
                headers={"content-type": "image/jpeg", "traceparent": header},
            )
        with gateway.grpc_channel("app") as channel, pytest.raises(grpc.RpcError) as failed:
            classifier_pb2_grpc.ClassifierStub(channel).Classify(
                classifier_pb2.ClassifyRequest(model="nope", image=PHOTO), timeout=30
            )
    finally:
        stop_gateway(gateway)
    assert refused.status_code == 400 and "trace_id" not in refused.json()
    assert "trace-id" not in dict(failed.value.trailing_metadata())
