"""The gRPC surface end to end: the real gateway process, grpcio clients, real certificates."""

from __future__ import annotations

import subprocess
import sys

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.bench.photos import digit_photo, digit_png
from gateway.security.pki import PkiPaths
from gateway.v1 import classifier_pb2, classifier_pb2_grpc
from tests.badinputs import png_bomb, truncated_jpeg
from tests.conftest import (
    MNIST_STABLE,
    REPO_ROOT,
    RunningGateway,
    executed,
    requests_counted,
    slow_batching_repo,
    start_gateway,
    stop_gateway,
)


@pytest.fixture(scope="module")
def stub(gateway: RunningGateway):
    with gateway.grpc_channel() as channel:
        yield classifier_pb2_grpc.ClassifierStub(channel)


def test_classify_answers_like_rest(gateway: RunningGateway, stub, heldout_sample) -> None:
    x, y = heldout_sample
    photo = digit_png(x[123])
    answer = stub.Classify(classifier_pb2.ClassifyRequest(model="mnist", image=photo, request_id="r-1"), timeout=30)
    assert (answer.label, answer.model, answer.version, answer.request_id) == (
        str(y[123]),
        "mnist",
        MNIST_STABLE,
        "r-1",
    )
    with gateway.client() as client:
        rest = client.post("/api/v1/models/mnist/classify", content=photo, headers={"content-type": "image/png"})
    assert rest.json()["label"] == answer.label
    for label, probability in rest.json()["probabilities"].items():
        assert answer.probabilities[label] == pytest.approx(probability, rel=1e-6)


@pytest.mark.parametrize(
    ("model", "image", "version", "code", "message"),
    [
        ("cifar", b"x", "", grpc.StatusCode.NOT_FOUND, "unknown model 'cifar'"),
        ("mnist", b"x", "9", grpc.StatusCode.NOT_FOUND, "no loaded version '9'"),
        ("mnist", b"not an image", "", grpc.StatusCode.INVALID_ARGUMENT, "not a JPEG, PNG or WebP"),
        ("mnist", truncated_jpeg(), "", grpc.StatusCode.INVALID_ARGUMENT, "truncated or corrupt"),
        ("mnist", png_bomb(), "", grpc.StatusCode.INVALID_ARGUMENT, "pixels"),
        ("mnist", b"", "", grpc.StatusCode.INVALID_ARGUMENT, "has no image"),
    ],
)
def test_bad_requests_get_precise_status_codes(stub, model, image, version, code, message) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.Classify(classifier_pb2.ClassifyRequest(model=model, image=image, version=version), timeout=30)
    assert raised.value.code() == code
    assert message in raised.value.details()
    assert dict(raised.value.trailing_metadata())["gateway-error-code"]


def test_a_deadline_too_short_is_deadline_exceeded_by_the_gateway_and_never_run(pki, tmp_path, heldout_sample) -> None:
    """Batches wait 3 s to fill. A call whose deadline passes in the queue is answered DEADLINE_EXCEEDED and its
    photo never runs: the caller's own deadline, and the model's queue-policy timeout for a caller without one
    (no client timer at all, so that answer can only be the gateway's)."""
    repo = slow_batching_repo(tmp_path, queue_policy="default_timeout_microseconds: 300000")
    gateway = start_gateway(pki, "--model-repo", str(repo))
    request = classifier_pb2.ClassifyRequest(model="mnist", image=digit_png(heldout_sample[0][1]))
    try:
        with gateway.grpc_channel() as channel:
            stub = classifier_pb2_grpc.ClassifierStub(channel)
            with pytest.raises(grpc.RpcError) as by_the_model:
                stub.Classify(request)
            assert by_the_model.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "no answer within the deadline of 300 ms" in by_the_model.value.details()
            assert dict(by_the_model.value.trailing_metadata())["gateway-error-code"] == "deadline_exceeded"
            assert requests_counted(gateway, "grpc", "DEADLINE_EXCEEDED") == 1
            with pytest.raises(grpc.RpcError) as by_the_caller:
                stub.Classify(request, timeout=0.5)
            assert by_the_caller.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert executed(gateway) == (0, 0)
            on_time = stub.Classify(request, timeout=30)  # alone in the queue: runs when the 3 s are up
        assert on_time.label == str(heldout_sample[1][1])
        assert executed(gateway) == (1, 1), "a call whose deadline passed in the queue was run too"
    finally:
        stop_gateway(gateway)


def test_stream_answers_every_photo_and_survives_a_bad_one(stub, heldout_sample) -> None:
    x, y = heldout_sample
    rng = np.random.default_rng(3)
    indices = list(range(0, 300, 15))
    requests = [
        classifier_pb2.ClassifyRequest(model="mnist", image=digit_photo(x[i], rng), request_id=f"photo-{i}")
        for i in indices
    ]
    requests.insert(5, classifier_pb2.ClassifyRequest(model="mnist", image=b"broken", request_id="bad"))
    answers = {a.request_id: a for a in stub.ClassifyStream(iter(requests), timeout=60)}
    assert set(answers) == {r.request_id for r in requests}
    assert answers["bad"].WhichOneof("outcome") == "error"
    assert answers["bad"].error.code == "invalid_input"
    assert answers["bad"].error.grpc_status == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    correct = [answers[f"photo-{i}"].prediction.label == str(y[i]) for i in indices]
    assert np.mean(correct) >= 0.9


def test_health_and_reflection(gateway: RunningGateway) -> None:
    with gateway.grpc_channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "gateway.v1.Classifier"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answer = next(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {service.name for service in answer.list_services_response.service}
    assert {"gateway.v1.Classifier", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize("who", ["no certificate", "another CA"])
def test_calls_without_a_certificate_from_our_ca_are_refused(
    gateway: RunningGateway, foreign_pki: PkiPaths, who: str, heldout_sample
) -> None:
    channel = gateway.grpc_channel(None) if who == "no certificate" else gateway.grpc_channel("app", foreign_pki)
    with channel, pytest.raises(grpc.RpcError) as raised:
        classifier_pb2_grpc.ClassifierStub(channel).Classify(
            classifier_pb2.ClassifyRequest(model="mnist", image=digit_png(heldout_sample[0][0])), timeout=10
        )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    gateway.assert_alive()


def test_grpc_requests_are_counted(gateway: RunningGateway, stub, heldout_sample) -> None:
    stub.Classify(classifier_pb2.ClassifyRequest(model="mnist", image=digit_png(heldout_sample[0][2])), timeout=30)
    with gateway.client() as client:
        text = client.get("/metrics").text
    assert f'gateway_requests_total{{code="OK",model="mnist",protocol="grpc",version="{MNIST_STABLE}"}}' in text


def test_the_readme_example_works(gateway: RunningGateway) -> None:
    example = REPO_ROOT / "docs" / "examples" / "classify_grpc.py"
    photos = [str(REPO_ROOT / "docs" / "examples" / name) for name in ("seven.jpg", "three.png")]
    common = ["--target", gateway.server.grpc_target, "--pki", str(gateway.pki.root)]
    unary = subprocess.run([sys.executable, str(example), photos[0], *common], capture_output=True, text=True)
    assert unary.returncode == 0, unary.stderr
    assert unary.stdout.split()[1] == "7"
    stream = subprocess.run([sys.executable, str(example), *photos, *common], capture_output=True, text=True)
    assert stream.returncode == 0, stream.stderr
    assert sorted(line.split()[1] for line in stream.stdout.splitlines()) == ["3", "7"]
