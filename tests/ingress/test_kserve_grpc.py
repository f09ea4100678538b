"""KServe v2 over gRPC, driven by Triton's own client (tritonclient.grpc) over mTLS."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway.bench.photos import digit_png
from gateway.models.repository import load_repository
from gateway.preprocess.pipeline import prepare_photo
from tests.conftest import MNIST_STABLE, MODEL_REPO, RunningGateway


@pytest.fixture(scope="module")
def client(kserve_grpc):
    return kserve_grpc


def infer(client, batch: np.ndarray, model: str = "mnist", input_name: str = "image", datatype: str = "FP32"):
    tensor = triton.InferInput(input_name, list(batch.shape), datatype)
    tensor.set_data_from_numpy(batch)
    return client.infer(model, [tensor], outputs=[triton.InferRequestedOutput("probabilities")])


def test_health_and_metadata(client) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mnist") and client.is_model_ready("mnist", "1")
    assert not client.is_model_ready("mnist", "7") and not client.is_model_ready("cifar")
    assert "binary_tensor_data" in client.get_server_metadata().extensions
    metadata = client.get_model_metadata("mnist")
    shipped = sorted(load_repository(MODEL_REPO)["mnist"].versions, key=int)  # mnist/2 waits for a canary
    assert (metadata.name, list(metadata.versions), metadata.platform) == ("mnist", shipped, "onnxruntime_onnx")
    assert (metadata.inputs[0].name, metadata.inputs[0].datatype, list(metadata.inputs[0].shape)) == (
        "image",
        "FP32",
        [-1, 1, 28, 28],
    )
    assert list(metadata.outputs[0].shape) == [-1, 10]
    config = client.get_model_config("mnist").config
    assert config == load_repository(MODEL_REPO)["mnist"].config


def test_infer_a_batch_of_tensors(client, heldout_sample) -> None:
    x, y = heldout_sample
    batch = (x[::37] / 255.0).astype(np.float32)[:, np.newaxis]
    result = infer(client, batch)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (len(batch), 10)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (probabilities.argmax(axis=1) == y[::37]).mean() >= 0.9
    assert result.get_response().model_version == MNIST_STABLE


def test_same_digit_same_answer_as_rest(gateway: RunningGateway, client, heldout_sample) -> None:
    photo = digit_png(heldout_sample[0][77])
    spec = load_repository(MODEL_REPO)["mnist"]
    tensor = prepare_photo(photo, spec, max_pixels=10**7).tensor[np.newaxis]
    kserve = infer(client, tensor).as_numpy("probabilities")[0]
    with gateway.client() as rest_client:
        rest = rest_client.post(
            "/api/v1/models/mnist/classify", content=photo, headers={"content-type": "image/png"}
        ).json()
    np.testing.assert_allclose(kserve, [rest["probabilities"][label] for label in spec.labels], rtol=1e-6)


def test_typed_contents_without_binary_data(gateway: RunningGateway, heldout_sample) -> None:
    row = (heldout_sample[0][5] / 255.0).astype(np.float32)
    request = service_pb2.ModelInferRequest(model_name="mnist", id="typed")
    tensor = request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 28, 28])
    tensor.contents.fp32_contents.extend(row.ravel().tolist())
    with gateway.grpc_channel() as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    probabilities = np.frombuffer(response.raw_output_contents[0], dtype="<f4")
    assert response.id == "typed" and list(response.outputs[0].shape) == [1, 10]
    assert probabilities.argmax() == heldout_sample[1][5]


@pytest.mark.parametrize(
    ("batch", "model", "input_name", "datatype", "status", "message"),
    [
        (np.zeros((1, 28, 28), np.float32), "mnist", "image", "FP32", "INVALID_ARGUMENT", "expects [-1, 1, 28, 28]"),
        (np.zeros((65, 1, 28, 28), np.float32), "mnist", "image", "FP32", "INVALID_ARGUMENT", "accepts 1 to 64"),
        (np.zeros((1, 1, 28, 28), np.float64), "mnist", "image", "FP64", "INVALID_ARGUMENT", "datatype FP64"),
        (np.zeros((1, 1, 28, 28), np.float32), "mnist", "pixels", "FP32", "INVALID_ARGUMENT", "unknown input 'pixels'"),
        (np.zeros((1, 1, 28, 28), np.float32), "cifar", "image", "FP32", "NOT_FOUND", "unknown model 'cifar'"),
    ],
)
def test_bad_tensors_are_refused_precisely(client, batch, model, input_name, datatype, status, message) -> None:
    with pytest.raises(InferenceServerException) as raised:
        infer(client, batch, model, input_name, datatype)
    assert raised.value.status() == f"StatusCode.{status}"
    assert message in raised.value.message()


def test_raw_bytes_that_lie_about_their_size(gateway: RunningGateway) -> None:
    request = service_pb2.ModelInferRequest(model_name="mnist")
    request.inputs.add(name="image", datatype="FP32", shape=[2, 1, 28, 28])
    request.raw_input_contents.append(b"\x00" * (784 * 4))
    with gateway.grpc_channel() as channel, pytest.raises(grpc.RpcError) as raised:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "carries 3136 bytes; shape [2, 1, 28, 28] of FP32 needs 6272" in raised.value.details()
    gateway.assert_alive()
