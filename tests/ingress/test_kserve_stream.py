"""KServe v2 ``ModelStreamInfer``, driven by Triton's own client (start_stream / async_stream_infer) over mTLS."""

from __future__ import annotations

import queue
import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.conftest import MNIST_STABLE, RunningGateway
from tests.ingress.conftest import triton_grpc_client


def inputs(batch: np.ndarray, datatype: str = "FP32") -> list[triton.InferInput]:
    tensor = triton.InferInput("image", list(batch.shape), datatype)
    tensor.set_data_from_numpy(batch)
    return [tensor]


def statistics(client: triton.InferenceServerClient):
    return client.get_inference_statistics("mnist", MNIST_STABLE).model_stats[0]


def collect(results: queue.Queue, count: int) -> tuple[dict[str, np.ndarray], list[str]]:
    answers, errors = {}, []
    for _ in range(count):
        result, error = results.get(timeout=30)
        if error is not None:
            errors.append(str(error))
        else:
            answers[result.get_response().id] = result.as_numpy("probabilities")
    return answers, errors


def test_each_request_is_answered_by_id_and_a_bad_one_does_not_end_the_stream(
    gateway: RunningGateway, heldout_sample
) -> None:
    rows = (heldout_sample[0][:20] / 255.0).astype(np.float32)[:, np.newaxis]
    results: queue.Queue = queue.Queue()
    with triton_grpc_client(gateway) as client:
        unary = {
            f"row-{i}": client.infer("mnist", inputs(rows[i : i + 1])).as_numpy("probabilities") for i in range(20)
        }
        before = statistics(client)
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        for i in range(20):
            if i == 7:
                client.async_stream_infer("mnist", inputs(rows[:1].astype(np.int32), "INT32"), request_id="bad-7")
            client.async_stream_infer(
                "mnist", inputs(rows[i : i + 1]), model_version=MNIST_STABLE, request_id=f"row-{i}"
            )
        client.async_stream_infer("cifar", inputs(rows[:1]), request_id="unknown-model")
        answers, errors = collect(results, 22)
        client.stop_stream()
        after = statistics(client)
    assert sorted(answers) == sorted(unary)
    for request_id, probabilities in answers.items():
        np.testing.assert_array_equal(probabilities, unary[request_id])  # the same answer as a unary call
    assert sorted(errors) == sorted(
        [
            "INVALID_ARGUMENT: request 'bad-7': input 'image' has datatype INT32; model 'mnist' expects FP32",
            "NOT_FOUND: request 'unknown-model': unknown model 'cifar'; available: hotdog, mnist",
        ]
    )
    # through the batcher like a unary call: 20 rows inferred, 20 requests answered, the refused one failed
    assert after.inference_count - before.inference_count == 20
    assert after.inference_stats.success.count - before.inference_stats.success.count == 20
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 1


def test_a_refused_request_is_answered_on_the_stream_with_its_id(gateway: RunningGateway, heldout_sample) -> None:
    good = service_pb2.ModelInferRequest(model_name="mnist", id="good")
    good.inputs.add(name="image", datatype="FP32", shape=[1, 1, 28, 28])
    good.raw_input_contents.append((heldout_sample[0][3] / 255.0).astype("<f4").tobytes())
    bad = service_pb2.ModelInferRequest(model_name="mnist", model_version="9", id="bad")
    bad.inputs.add(name="image", datatype="FP32", shape=[1, 1, 28, 28])
    bad.raw_input_contents.append(b"\0" * 4 * 784)
    with gateway.grpc_channel() as channel:
        responses = list(
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter([bad, good]), timeout=30)
        )
    by_id = {response.infer_response.id: response for response in responses}
    assert sorted(by_id) == ["bad", "good"]
    assert by_id["bad"].error_message.startswith("NOT_FOUND: request 'bad': model 'mnist' has no loaded version '9'")
    assert by_id["bad"].infer_response.model_name == "mnist" and not by_id["bad"].infer_response.outputs
    assert by_id["good"].error_message == ""
    probabilities = np.frombuffer(by_id["good"].infer_response.raw_output_contents[0], dtype="<f4")
    assert probabilities.argmax() == heldout_sample[1][3]


def test_the_stream_deadline_ends_the_call(gateway: RunningGateway, heldout_sample) -> None:
    row = (heldout_sample[0][:1] / 255.0).astype(np.float32)[:, np.newaxis]
    results: queue.Queue = queue.Queue()
    with triton_grpc_client(gateway) as client:
        client.start_stream(callback=lambda result, error: results.put((result, error)), stream_timeout=2.0)
        client.async_stream_infer("mnist", inputs(row), request_id="in-time")
        answers, _ = collect(results, 1)
        assert list(answers) == ["in-time"]
        _, error = results.get(timeout=30)  # the client never closes its side: the deadline ends the call
        client.stop_stream()
        assert error is not None and error.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert client.infer("mnist", inputs(row)).as_numpy("probabilities").shape == (1, 10)


def test_a_cancelled_stream_ends_and_the_gateway_goes_on(gateway: RunningGateway, heldout_sample) -> None:
    request = service_pb2.ModelInferRequest(model_name="mnist", id="first")
    request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 28, 28])
    request.raw_input_contents.append((heldout_sample[0][0] / 255.0).astype("<f4").tobytes())
    release = threading.Event()

    def requests():
        yield request
        release.wait(30)  # keep the request side open until the call is cancelled

    with gateway.grpc_channel() as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        call = stub.ModelStreamInfer(requests(), timeout=60)
        assert next(call).infer_response.id == "first"
        call.cancel()
        with pytest.raises(grpc.RpcError) as raised:
            next(call)
        release.set()
        assert raised.value.code() == grpc.StatusCode.CANCELLED
        again = list(stub.ModelStreamInfer(iter([request]), timeout=30))
    assert [response.infer_response.id for response in again] == ["first"]
    gateway.assert_alive()
