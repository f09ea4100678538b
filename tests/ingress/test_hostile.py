"""A hostile-request corpus against a live gateway, on every surface: each request breaks one parser
limit or rule and must get a precise 4xx / gRPC status naming it; the gateway keeps serving.

The gateway here runs with small limits (set by environment, as an operator would), so each limit
is shown to be configurable and is hit on both sides: just under it is served, just over is refused.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.bench.photos import digit_png
from tests.conftest import RunningGateway, gateway_with

LIMITS = {
    "GATEWAY_LIMITS_JSON_MAX_DEPTH": "12",
    "GATEWAY_LIMITS_JSON_MAX_BYTES": "100000",
    "GATEWAY_LIMITS_ADMIN_MAX_BYTES": "2000",
    "GATEWAY_LIMITS_MULTIPART_MAX_PARTS": "3",
    "GATEWAY_LIMITS_MAX_TENSOR_ELEMENTS": str(8 * 784),
    "GATEWAY_LIMITS_MAX_HEADER_BYTES": "8192",
    "GATEWAY_LIMITS_GRPC_MAX_MESSAGE_BYTES": "200000",
    "GATEWAY_LIMITS_GRPC_MAX_METADATA_BYTES": "4096",
}
KSERVE = "/v2/models/mnist/infer"
TFSERVING = "/v1/models/mnist:predict"
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def hostile(pki) -> Iterator[RunningGateway]:
    with gateway_with(pki, LIMITS) as running:
        yield running


@pytest.fixture(scope="module")
def http(hostile: RunningGateway) -> Iterator[httpx.Client]:
    with hostile.client() as client:
        yield client


@pytest.fixture(scope="module")
def operator(hostile: RunningGateway) -> Iterator[httpx.Client]:
    with hostile.client("operator") as client:
        yield client


def kserve_body(rows: int = 1, data: object = None) -> dict:
    values = data if data is not None else [0.5] * (rows * 784)
    return {"inputs": [{"name": "image", "shape": [rows, 1, 28, 28], "datatype": "FP32", "data": values}]}


def refused(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    message = json.dumps(response.json())
    for word in words:
        assert word in message, message


def deep(depth: int, opener: str = "[") -> bytes:
    closer = {"[": "]", "{": "}"}[opener]
    inner = '"a":' if opener == "{" else ""
    return ((opener + inner) * depth + "0" + closer * depth).encode()


JSON_SURFACES = [
    ("post", KSERVE, "app"),
    ("post", TFSERVING, "app"),
    ("put", "/api/v1/models/mnist/rollout", "operator"),
    ("post", "/api/v1/predictions/abc/feedback", "app"),
]


@pytest.mark.parametrize(("method", "path", "who"), JSON_SURFACES)
@pytest.mark.parametrize("opener", ["[", "{"])
def test_deep_json_is_400_on_every_json_surface(http, operator, method, path, who, opener) -> None:
    client = operator if who == "operator" else http
    tensors = path in (KSERVE, TFSERVING)
    for depth in (13, (40_000 if tensors else 900) if opener == "[" else (10_000 if tensors else 300)):
        response = client.request(method, path, content=deep(depth, opener), headers=JSON)
        refused(response, 400, f"{depth:,} deep", "limits.json_max_depth")


@pytest.mark.parametrize("path", [KSERVE, TFSERVING])
def test_the_issues_100000_nested_arrays_are_400_with_default_limits(gateway: RunningGateway, path: str) -> None:
    """The reproduction from issue 21 (a RecursionError and a 500 before), against a gateway with defaults."""
    with gateway.client() as client:
        response = client.post(path, content=deep(100_000), headers=JSON)
    refused(response, 400, "100,000 deep", "the limit is 32")


@pytest.mark.parametrize(("method", "path", "who", "limit"), [
    ("post", KSERVE, "app", "limits.json_max_bytes"),
    ("post", TFSERVING, "app", "limits.json_max_bytes"),
    ("put", "/api/v1/models/mnist/rollout", "operator", "limits.admin_max_bytes"),
    ("post", "/api/v1/predictions/abc/feedback", "app", "limits.admin_max_bytes"),
])  # fmt: skip
def test_wide_json_past_its_size_limit_is_413(http, operator, method, path, who, limit) -> None:
    client = operator if who == "operator" else http
    wide = json.dumps({"inputs": [0] * 60_000}).encode()
    refused(client.request(method, path, content=wide, headers=JSON), 413, limit)


def test_json_just_within_the_limits_is_served(http) -> None:
    """Depth 12 and brackets inside strings (which do not count) are served."""
    body = kserve_body(data=[[[[0.5] * 28] * 28]])  # {"inputs":[{"data":[[[[ : depth 7
    body["id"] = "[[[[[[[[[[[[[[[[[[[[{{{{{{{{{{"
    body["parameters"] = {"a": [[[[[1]]]]]}  # depth 7 too; 12 needs nothing else
    response = http.post(KSERVE, content=json.dumps(body).encode(), headers=JSON)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == body["id"]
    instances = {"instances": [[[[[[[[[[[0.5] * 28] * 28]]]]]]]]]}  # 11 levels of arrays
    refused(http.post(TFSERVING, json=instances), 400, "shape")  # parsed: the model's shape is what refuses it


HUGE = [
    (b'{"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [' + b"9" * 5000 + b"]}]}",
     400, "not valid JSON"),
    (json.dumps(kserve_body(data=[10**400] + [0] * 783)).encode(), 400, "numbers"),
    (json.dumps(kserve_body(data=[1e308 * 10] + [0] * 783)).encode(), 400, "NaN or infinite"),
    (b'{"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [1e999' + b", 0" * 783
     + b"]}]}", 400, "NaN or infinite"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "words"), HUGE)
def test_huge_numbers_are_400(http, body: bytes, status: int, words: str) -> None:
    refused(http.post(KSERVE, content=body, headers=JSON), status, words)
    tfs = body.replace(b'{"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": ', b"")
    tfs = b'{"instances": [' + tfs.removesuffix(b"}]}") + b"]}"
    assert http.post(TFSERVING, content=tfs, headers=JSON).status_code == 400


def test_duplicate_keys_are_400_naming_the_key(http, operator) -> None:
    inputs = json.dumps(kserve_body()["inputs"])
    body = f'{{"inputs": {inputs}, "inputs": {inputs}}}'.encode()
    refused(http.post(KSERVE, content=body, headers=JSON), 400, "'inputs' twice")
    refused(http.post(TFSERVING, content=b'{"instances": [[1]], "instances": [[2]]}', headers=JSON), 400, "twice")
    rollout = b'{"canary_percent": 5, "canary_percent": 50}'
    refused(operator.put("/api/v1/models/mnist/rollout", content=rollout, headers=JSON), 400, "'canary_percent' twice")
    feedback = b'{"label": "3", "label": "7"}'
    refused(http.post("/api/v1/predictions/abc/feedback", content=feedback, headers=JSON), 400, "'label' twice")


@pytest.mark.parametrize(
    "body",
    [
        json.dumps(kserve_body()).encode("utf-16"),
        json.dumps(kserve_body()).encode("utf-32"),
        b"\xef\xbb\xbf" + json.dumps(kserve_body()).encode(),
        b'{"id": "caf\xe9", ' + json.dumps(kserve_body()).encode()[1:],
    ],
    ids=["utf-16", "utf-32", "utf-8-bom", "latin-1"],
)
def test_json_not_in_utf8_is_400(http, body: bytes) -> None:
    response = http.post(KSERVE, content=body, headers=JSON)
    assert response.status_code == 400, response.text
    assert "UTF-8" in response.text or "BOM" in response.text or "not valid JSON" in response.text


def test_tensor_element_limit_on_every_tensor_surface(hostile: RunningGateway, http) -> None:
    assert http.post(KSERVE, json=kserve_body(rows=8)).status_code == 200
    refused(http.post(KSERVE, json=kserve_body(rows=9)), 413, "7,056 elements", "limits.max_tensor_elements")
    refused(http.post(TFSERVING, json={"instances": [[[[0.5] * 28] * 28]] * 9}), 413, "limits.max_tensor_elements")
    with hostile.grpc_channel() as channel:
        kserve = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="mnist")
        request.inputs.add(name="image", datatype="FP32", shape=[2**40, 1, 28, 28])
        request.raw_input_contents.append(b"\0" * 4 * 784)
        with pytest.raises(grpc.RpcError) as failure:
            kserve.ModelInfer(request, timeout=10)
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "limits.max_tensor_elements" in failure.value.details()
        tfs = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        predict = predict_pb2.PredictRequest()
        predict.model_spec.name = "mnist"
        dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in (9, 1, 28, 28)]
        predict.inputs["image"].CopyFrom(
            tensor_pb2.TensorProto(
                dtype=types_pb2.DT_FLOAT,
                tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims),
                tensor_content=np.zeros(9 * 784, "<f4").tobytes(),
            )
        )
        with pytest.raises(grpc.RpcError) as failure:
            tfs.Predict(predict, timeout=10)
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "7,056 elements" in failure.value.details()


def test_grpc_message_and_metadata_limits(hostile: RunningGateway) -> None:
    with hostile.grpc_channel() as channel:
        kserve = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="mnist")
        request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 28, 28])
        request.raw_input_contents.append(b"\0" * 4 * 784)
        assert kserve.ModelInfer(request, timeout=10).outputs
        with pytest.raises(grpc.RpcError) as failure:
            kserve.ModelInfer(request, timeout=10, metadata=[("x-padding", "p" * 6000)])
        assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, failure.value
        big = service_pb2.ModelInferRequest(model_name="mnist")
        big.inputs.add(name="image", datatype="FP32", shape=[64, 1, 28, 28])
        big.raw_input_contents.append(b"\0" * 4 * 784 * 64)
        with pytest.raises(grpc.RpcError) as failure:
            kserve.ModelInfer(big, timeout=10)
        assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "200000" in failure.value.details()
        assert kserve.ModelInfer(request, timeout=10).outputs  # still serving on the same channel


def multipart(parts: int) -> tuple[bytes, str]:
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255  # a one
    photo = digit_png(digit)
    chunks = [b'--b\r\nContent-Disposition: form-data; name="image"\r\n\r\n' + photo + b"\r\n"]
    chunks += [b'--b\r\nContent-Disposition: form-data; name="note%d"\r\n\r\nx\r\n' % i for i in range(parts - 1)]
    return b"".join(chunks) + b"--b--\r\n", "multipart/form-data; boundary=b"


def test_multipart_part_limit(http) -> None:
    body, content_type = multipart(3)
    response = http.post("/api/v1/models/mnist/classify", content=body, headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    body, content_type = multipart(4)
    response = http.post("/api/v1/models/mnist/classify", content=body, headers={"content-type": content_type})
    refused(response, 413, "more than 3 parts", "limits.multipart_max_parts")


def raw_request(hostile: RunningGateway, head: bytes) -> bytes:
    """Send ``head`` on a fresh mTLS connection; what the gateway answers before it closes."""
    pki = hostile.pki
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.client_cert("app")), str(pki.client_key("app")))
    host, port = hostile.base_url.removeprefix("https://").rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=10)
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            tls.sendall(head)  # refused before everything was sent: the answer is what counts
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    "headers",
    [
        [("x-big", "v" * 200_000)],
        [(f"x-h{i}", "v" * 100) for i in range(100)],
        [("x-url", "v")],
    ],
    ids=["one-200KB-header", "many-headers", "long-url"],
)
def test_an_oversized_header_block_is_431(hostile: RunningGateway, http, headers) -> None:
    path = "/healthz?" + "q" * 9000 if headers[0][0] == "x-url" else "/healthz"
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    answer = raw_request(hostile, f"GET {path} HTTP/1.1\r\nhost: x\r\n{lines}\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"limits.max_header_bytes" in answer
    ok = http.get("/healthz", headers={"x-medium": "v" * 7000})  # under the limit: served
    assert ok.status_code == 200
