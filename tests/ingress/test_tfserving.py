"""TensorFlow Serving's API, driven by the real tensorflow-serving-api client stubs (and TensorFlow's tensors).

This module must not import gateway.tfs: the gateway's byte-compatible copy of the protos and
TensorFlow's own would clash in one process. The gateway runs in its own process here.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from gateway.bench.photos import digit_png
from gateway.models.repository import load_repository
from gateway.preprocess.pipeline import prepare_photo
from tests.conftest import MNIST_STABLE, MODEL_REPO, REPO_ROOT, RunningGateway


@pytest.fixture(scope="module")
def stub(gateway: RunningGateway):
    with gateway.grpc_channel() as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def predict_request(batch: np.ndarray, *, version: int | None = None, label: str | None = None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mnist"
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(batch))
    return request


def test_predict_by_version_and_by_label(stub, heldout_sample) -> None:
    x, y = heldout_sample
    batch = (x[3::60] / 255.0).astype(np.float32)[:, np.newaxis]
    by_version = stub.Predict(predict_request(batch, version=int(MNIST_STABLE)), timeout=30)
    by_label = stub.Predict(predict_request(batch, label="stable"), timeout=30)
    probabilities = tf.make_ndarray(by_version.outputs["probabilities"])
    assert probabilities.shape == (len(batch), 10)
    assert (probabilities.argmax(axis=1) == y[3::60]).mean() >= 0.8
    np.testing.assert_array_equal(probabilities, tf.make_ndarray(by_label.outputs["probabilities"]))
    assert by_version.model_spec.version.value == int(MNIST_STABLE) and by_version.model_spec.name == "mnist"


@pytest.mark.parametrize(
    ("kwargs", "batch", "code", "message"),
    [
        ({"label": "canary"}, np.zeros((1, 1, 28, 28), np.float32), grpc.StatusCode.NOT_FOUND, "labelled 'canary'"),
        ({"version": 9}, np.zeros((1, 1, 28, 28), np.float32), grpc.StatusCode.NOT_FOUND, "no loaded version '9'"),
        ({}, np.zeros((1, 28, 28), np.float32), grpc.StatusCode.INVALID_ARGUMENT, "expects [-1, 1, 28, 28]"),
        ({}, np.zeros((1, 1, 28, 28), np.int32), grpc.StatusCode.INVALID_ARGUMENT, "datatype INT32"),
    ],
)
def test_bad_predictions_are_refused_precisely(stub, kwargs, batch, code, message) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(predict_request(batch, **kwargs), timeout=30)
    assert raised.value.code() == code
    assert message in raised.value.details()


def test_model_metadata_describes_the_signature(stub) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "mnist"
    response = stub.GetModelMetadata(request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    assert [d.size for d in signature.inputs["image"].tensor_shape.dim] == [-1, 1, 28, 28]
    assert signature.outputs["probabilities"].dtype == tf.float32.as_datatype_enum


def test_same_digit_same_answer_on_all_surfaces(gateway: RunningGateway, stub, heldout_sample) -> None:
    photo = digit_png(heldout_sample[0][250])
    spec = load_repository(MODEL_REPO)["mnist"]
    tensor = prepare_photo(photo, spec, max_pixels=10**7).tensor[np.newaxis]
    grpc_answer = tf.make_ndarray(stub.Predict(predict_request(tensor), timeout=30).outputs["probabilities"])[0]
    with gateway.client() as http:
        rest = http.post("/api/v1/models/mnist/classify", content=photo, headers={"content-type": "image/png"}).json()
        rows = http.post("/v1/models/mnist:predict", json={"instances": tensor.tolist()}).json()["predictions"][0]
        columns = http.post(
            f"/v1/models/mnist/versions/{MNIST_STABLE}:predict", json={"inputs": {"image": tensor.tolist()}}
        )
    expected = [rest["probabilities"][label] for label in spec.labels]
    np.testing.assert_allclose(grpc_answer, expected, rtol=1e-6)
    np.testing.assert_allclose(rows, expected, rtol=1e-6)
    np.testing.assert_allclose(columns.json()["outputs"][0], expected, rtol=1e-6)


def test_rest_version_status_and_errors(gateway: RunningGateway) -> None:
    with gateway.client() as http:
        status = http.get("/v1/models/mnist").json()
        labelled = http.get("/v1/models/mnist/labels/stable").json()
        canary = http.post("/v1/models/mnist/labels/canary:predict", json={"instances": [[0]]})
        both = http.post("/v1/models/mnist:predict", json={"instances": [], "inputs": []})
        ragged = http.post("/v1/models/mnist:predict", json={"instances": [[1, 2], [3]]})
    assert status["model_version_status"] == [
        {"version": version, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        for version in sorted(load_repository(MODEL_REPO)["mnist"].versions, key=int)
    ]
    assert labelled["model_version_status"][0]["version"] == MNIST_STABLE
    assert canary.status_code == 404 and "labelled 'canary'" in canary.json()["error"]
    assert both.status_code == 400 and "either" in both.json()["error"]
    assert ragged.status_code == 400 and "one shape" in ragged.json()["error"]


def test_the_hotdog_model_over_tf_serving_grpc(gateway: RunningGateway, stub) -> None:
    photo = (REPO_ROOT / "model_repo/training/hotdog_photos/hotdog/hol_hot_dogs-0001.jpg").read_bytes()
    tensor = prepare_photo(photo, load_repository(MODEL_REPO)["hotdog"], max_pixels=10**8).tensor[np.newaxis]
    request = predict_request(tensor)
    request.model_spec.name = "hotdog"
    answer = tf.make_ndarray(stub.Predict(request, timeout=30).outputs["probabilities"])
    with gateway.client() as http:
        rest = http.post("/api/v1/models/hotdog/classify", content=photo, headers={"content-type": "image/jpeg"})
    expected = [rest.json()["probabilities"][label] for label in ("hotdog", "not_hotdog")]
    np.testing.assert_allclose(answer[0], expected, rtol=1e-5)
    assert answer.shape == (1, 2) and answer[0].argmax() == 0
