"""Triton's statistics extension (gRPC ModelStatistics, HTTP /v2/models/.../stats) against the traffic sent.

A gateway of its own, so that its counters hold exactly what this module sends; read with Triton's own
clients over mTLS and compared with /metrics.
"""

from __future__ import annotations

import queue
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from google.protobuf import json_format
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.conftest import MODEL_REPO, RunningGateway, start_gateway, stop_gateway
from tests.ingress.conftest import triton_grpc_client, triton_http_client
from tests.test_supervisor import owner_of, workers_of

UNARY_GRPC = 12
HTTP_REQUESTS, HTTP_ROWS = 3, 4
CONCURRENT = 16
BAD = 2


@pytest.fixture(scope="module")
def fresh(pki) -> Iterator[RunningGateway]:
    running = start_gateway(pki, "--model-repo", str(MODEL_REPO))
    yield running
    stop_gateway(running)


def grpc_input(batch: np.ndarray, datatype: str = "FP32") -> list[triton.InferInput]:
    tensor = triton.InferInput("image", list(batch.shape), datatype)
    tensor.set_data_from_numpy(batch)
    return [tensor]


def send_traffic(fresh: RunningGateway, rows: np.ndarray) -> tuple[int, int]:
    """Unary gRPC, multi-row HTTP, concurrent async gRPC and refused requests, all on mnist version 1.
    Returns (requests answered, rows inferred)."""
    with triton_grpc_client(fresh) as client:
        for i in range(UNARY_GRPC):
            client.infer("mnist", grpc_input(rows[i : i + 1]), model_version="1")
        answers: queue.Queue = queue.Queue()
        for i in range(CONCURRENT):
            row = rows[UNARY_GRPC + i : UNARY_GRPC + i + 1]
            client.async_infer("mnist", grpc_input(row), lambda result, error: answers.put(error), model_version="1")
        assert [answers.get(timeout=30) for _ in range(CONCURRENT)] == [None] * CONCURRENT
        for _ in range(BAD):
            with pytest.raises(InferenceServerException, match="INT32"):
                client.infer("mnist", grpc_input(rows[:1].astype(np.int32), "INT32"), model_version="1")
    http = triton_http_client(fresh)
    try:
        for i in range(HTTP_REQUESTS):
            tensor = triton_http.InferInput("image", [HTTP_ROWS, 1, 28, 28], "FP32")
            tensor.set_data_from_numpy(rows[i * HTTP_ROWS : (i + 1) * HTTP_ROWS])
            assert http.infer("mnist", [tensor], model_version="1").as_numpy("probabilities").shape == (HTTP_ROWS, 10)
    finally:
        http.close()
    return UNARY_GRPC + CONCURRENT + HTTP_REQUESTS, UNARY_GRPC + CONCURRENT + HTTP_REQUESTS * HTTP_ROWS


def as_plain(message) -> dict:
    """A statistics message as the HTTP surface writes it: numbers, zeros included."""

    def numbers(value, key: str = ""):
        if isinstance(value, dict):
            return {name: numbers(item, name) for name, item in value.items()}
        if isinstance(value, list):
            return [numbers(item) for item in value]
        return int(value) if isinstance(value, str) and key not in ("name", "version") else value

    return numbers(
        json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    )


def metric_samples(fresh: RunningGateway) -> dict[tuple[str, tuple], float]:
    with fresh.client() as client:
        text = client.get("/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_statistics_count_the_traffic_sent_and_match_metrics(fresh: RunningGateway, heldout_sample) -> None:
    rows = (heldout_sample[0][:40] / 255.0).astype(np.float32)[:, np.newaxis]
    started_ms = time.time() * 1000
    started = time.perf_counter()
    answered, inferred = send_traffic(fresh, rows)
    elapsed_ns = (time.perf_counter() - started) * 1e9
    with triton_grpc_client(fresh) as client:
        stats = client.get_inference_statistics("mnist", "1").model_stats
    assert len(stats) == 1 and (stats[0].name, stats[0].version) == ("mnist", "1")
    version = stats[0]
    inference = version.inference_stats
    assert (inference.success.count, inference.fail.count) == (answered, BAD)
    assert 0 < inference.success.ns < answered * elapsed_ns and 0 < inference.fail.ns < BAD * elapsed_ns
    assert version.inference_count == inferred
    assert inference.queue.count == inference.compute_infer.count == inferred
    assert started_ms <= version.last_inference <= time.time() * 1000
    batches = version.batch_stats
    assert sum(b.batch_size * b.compute_infer.count for b in batches) == inferred
    assert sum(b.compute_infer.count for b in batches) == version.execution_count
    per_row = sum(b.batch_size * b.compute_infer.ns for b in batches)
    assert abs(per_row - inference.compute_infer.ns) <= inferred + version.execution_count  # ns rounding
    assert all(b.compute_input.count == b.compute_output.count == b.compute_infer.count for b in batches)

    http = triton_http_client(fresh)
    try:
        assert http.get_inference_statistics("mnist", "1") == {"model_stats": [as_plain(version)]}
    finally:
        http.close()

    samples = metric_samples(fresh)
    labels = (("model", "mnist"), ("version", "1"))

    def phase(name: str) -> float:
        return samples[("gateway_inference_duration_ns_total", (*labels[:1], ("phase", name), labels[1]))]

    assert samples[("gateway_inference_request_success_total", labels)] == answered
    assert samples[("gateway_inference_request_failure_total", labels)] == BAD
    assert samples[("gateway_inference_count_total", labels)] == inferred
    assert samples[("gateway_inference_exec_count_total", labels)] == version.execution_count
    assert [phase(p) for p in ("success", "fail", "queue", "compute_infer")] == [
        inference.success.ns,
        inference.fail.ns,
        inference.queue.ns,
        inference.compute_infer.ns,
    ]
    # the batcher's own histograms, fed by the same batches
    assert samples[("gateway_batch_size_count", labels)] == version.execution_count
    assert samples[("gateway_queue_delay_seconds_count", labels)] == inferred
    assert samples[("gateway_queue_delay_seconds_sum", labels)] == pytest.approx(inference.queue.ns / 1e9, rel=1e-6)


def test_every_loaded_version_is_listed_and_unknown_ones_are_refused(fresh: RunningGateway) -> None:
    with triton_grpc_client(fresh) as client:
        every = client.get_inference_statistics().model_stats
        mnist = client.get_inference_statistics("mnist").model_stats
        metadata = client.get_model_metadata("mnist")
        with pytest.raises(InferenceServerException, match="no loaded version '7'") as raised:
            client.get_inference_statistics("mnist", "7")
        assert raised.value.status() == "StatusCode.NOT_FOUND"
        with pytest.raises(InferenceServerException, match="unknown model 'cifar'"):
            client.get_inference_statistics("cifar")
    loaded = [("hotdog", v) for v in client_versions(fresh, "hotdog")] + [("mnist", v) for v in metadata.versions]
    assert sorted((s.name, s.version) for s in every) == sorted(loaded)
    assert [s.version for s in mnist] == list(metadata.versions)
    hotdog = next(s for s in every if s.name == "hotdog")
    assert (hotdog.inference_count, hotdog.execution_count, hotdog.last_inference) == (0, 0, 0)
    with fresh.client() as client:
        assert client.get("/v2/models/stats").json()["model_stats"] == [as_plain(s) for s in every]
        response = client.get("/v2/models/mnist/versions/7/stats")
        assert response.status_code == 404 and "no loaded version '7'" in response.json()["error"]


def client_versions(fresh: RunningGateway, model: str) -> list[str]:
    with fresh.client() as client:
        return client.get(f"/v2/models/{model}").json()["versions"]


WORKER_CLIENTS = 8
MAX_WORKER_CLIENTS = 64
WORKER_INFERS = 3


def own_connection_client(gateway: RunningGateway) -> triton.InferenceServerClient:
    """Triton's gRPC client on a TCP connection of its own (gRPC shares one between channels otherwise)."""
    pki = gateway.pki
    return triton.InferenceServerClient(
        gateway.server.grpc_target,
        ssl=True,
        root_certificates=str(pki.ca_cert),
        private_key=str(pki.client_key("app")),
        certificate_chain=str(pki.client_cert("app")),
        channel_args=[("grpc.use_local_subchannel_pool", 1)],
    )


def connection_owners(port: int, pids: list[int]) -> set[int | None]:
    """The worker processes holding the server side of the established connections to ``port``."""
    inodes = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes.append(fields[9])
    return {owner_of(inode, pids) for inode in inodes}


def test_with_two_workers_every_call_answers_for_the_whole_gateway(two_workers, heldout_sample) -> None:
    gateway, health_port = two_workers
    pids = workers_of(gateway)
    assert len(pids) == 2
    rows = (heldout_sample[0][:64] / 255.0).astype(np.float32)[:, np.newaxis]
    started_ms = time.time() * 1000
    port = int(gateway.server.grpc_target.rsplit(":", 1)[1])
    clients: list[triton.InferenceServerClient] = []
    try:
        # The kernel picks a worker per connection by a hash: 8 connections all land on one worker once in 128
        # runs, so connections are added (up to MAX_WORKER_CLIENTS) until both workers hold some.
        while len(clients) < WORKER_CLIENTS or (
            connection_owners(port, pids) != set(pids) and len(clients) < MAX_WORKER_CLIENTS
        ):
            clients.append(own_connection_client(gateway))
            for i in range(WORKER_INFERS):
                row = ((len(clients) - 1) * WORKER_INFERS + i) % len(rows)
                clients[-1].infer("mnist", grpc_input(rows[row : row + 1]), model_version="1")
        with pytest.raises(InferenceServerException, match="INT32"):
            clients[0].infer("mnist", grpc_input(rows[:1].astype(np.int32), "INT32"), model_version="1")
        assert connection_owners(port, pids) == set(pids), "the kernel spread the clients over both workers"
        calls = len(clients) * WORKER_INFERS
    finally:
        for client in clients:
            client.close()
    for _ in range(HTTP_REQUESTS):
        http = triton_http_client(gateway)
        try:
            tensor = triton_http.InferInput("image", [HTTP_ROWS, 1, 28, 28], "FP32")
            tensor.set_data_from_numpy(rows[:HTTP_ROWS])
            http.infer("mnist", [tensor], model_version="1")
        finally:
            http.close()
    answered = calls + HTTP_REQUESTS
    inferred = calls + HTTP_REQUESTS * HTTP_ROWS

    reads = []
    for _ in range(WORKER_CLIENTS):  # each read on a new connection: both workers answer some
        with own_connection_client(gateway) as client:
            reads.append(as_plain(client.get_inference_statistics("mnist", "1").model_stats[0]))
        http = triton_http_client(gateway)
        try:
            reads.append(http.get_inference_statistics("mnist", "1")["model_stats"][0])
        finally:
            http.close()
    assert all(read == reads[0] for read in reads), "every worker gives the same figures"
    version = reads[0]
    inference = version["inference_stats"]
    assert (inference["success"]["count"], inference["fail"]["count"]) == (answered, 1)
    assert version["inference_count"] == inference["compute_infer"]["count"] == inferred
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in version["batch_stats"]) == inferred
    assert sum(b["compute_infer"]["count"] for b in version["batch_stats"]) == version["execution_count"]
    assert started_ms <= version["last_inference"] <= time.time() * 1000

    text = urllib.request.urlopen(f"http://127.0.0.1:{health_port}/metrics", timeout=10).read().decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    labels = (("model", "mnist"), ("version", "1"))
    assert samples[("gateway_inference_request_success_total", labels)] == answered
    assert samples[("gateway_inference_request_failure_total", labels)] == 1
    assert samples[("gateway_inference_count_total", labels)] == inferred
    assert samples[("gateway_inference_exec_count_total", labels)] == version["execution_count"]
    assert samples[("gateway_inference_last_ms", labels)] == version["last_inference"]
    assert samples[("gateway_batch_size_count", labels)] == version["execution_count"], "the histograms agree"
    assert (
        samples[("gateway_inference_duration_ns_total", (labels[0], ("phase", "queue"), labels[1]))]
        == (inference["queue"]["ns"])
    )
