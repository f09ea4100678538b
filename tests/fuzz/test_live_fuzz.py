"""Hostile requests against a running gateway, over the wire: every one gets a 4xx / a client-error
status, never a 5xx / INTERNAL, and the gateway keeps serving."""

from __future__ import annotations

import json

import grpc
import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.conftest import RunningGateway
from tests.fuzz.strategies import EXAMPLES, FUZZ, json_values, mutated_images, nested_json

LIVE = settings(FUZZ, max_examples=max(EXAMPLES // 3, 20))
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
}


@pytest.fixture(scope="module")
def http(gateway: RunningGateway):
    with gateway.client() as client:
        yield client
    gateway.assert_alive()


@pytest.fixture(scope="module")
def tf_stub(gateway: RunningGateway):
    with gateway.grpc_channel() as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def refused_cleanly(response: httpx.Response) -> bool:
    return response.status_code < 500 and (response.status_code < 400 or "error" in response.json())


@LIVE
@given(
    body=mutated_images() | st.binary(max_size=512),
    model=st.sampled_from(["mnist", "hotdog", "nope"]),
    content_type=st.sampled_from(
        ["image/jpeg", "image/png", "image/webp", "multipart/form-data; boundary=x", "text/plain"]
    ),
)
def test_photo_uploads(http: httpx.Client, body: bytes, model: str, content_type: str) -> None:
    response = http.post(f"/api/v1/models/{model}/classify", content=body, headers={"content-type": content_type})
    assert refused_cleanly(response), response.text


@LIVE
@given(payload=json_values, path=st.sampled_from(["/v2/models/mnist/infer", "/v1/models/mnist:predict"]))
def test_tensor_json_bodies(http: httpx.Client, payload, path: str) -> None:
    body = json.dumps(payload).encode()  # Python writes NaN and Infinity, which strict JSON lacks: hostile too
    response = http.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text


@LIVE
@given(
    body=nested_json(),
    path=st.sampled_from(["/v2/models/mnist/infer", "/v1/models/mnist:predict", "/api/v1/predictions/x/feedback"]),
)
def test_nested_json_bodies(http: httpx.Client, body: bytes, path: str) -> None:
    response = http.post(path, content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500 and refused_cleanly(response), response.text


@st.composite
def predict_requests(draw: st.DrawFn) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = draw(st.sampled_from(["mnist", "hotdog", "x"]))
    if draw(st.booleans()):
        request.model_spec.version.value = draw(st.integers(-5, 5))
    for name in draw(st.lists(st.sampled_from(["image", "other"]), max_size=2, unique=True)):
        tensor = tensor_pb2.TensorProto(dtype=draw(st.sampled_from([1, 2, 3, 7, 19, 0, 999, -4])))
        dims = draw(st.lists(st.integers(-(2**40), 2**40), max_size=5) | st.just([1, 1, 28, 28]))
        tensor.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(dim=[{"size": d} for d in dims]))
        if draw(st.booleans()):
            size = draw(st.sampled_from([4 * 784, 4 * 784 - 2, 3]))
            tensor.tensor_content = (
                np.array(draw(st.lists(st.floats(width=32), min_size=784, max_size=784)), "<f4").tobytes()
                if size == 4 * 784 and draw(st.booleans())
                else draw(st.binary(min_size=size, max_size=size))
            )
        else:
            tensor.float_val.extend(draw(st.lists(st.floats(width=32), max_size=800)))
        request.inputs[name].CopyFrom(tensor)
    return request


@LIVE
@given(request=predict_requests())
def test_tf_serving_grpc_messages(tf_stub, request: predict_pb2.PredictRequest) -> None:
    try:
        tf_stub.Predict(request, timeout=30)
    except grpc.RpcError as error:
        assert error.code() in CLIENT_ERRORS, (error.code(), error.details())
        assert error.details()
