"""KServe v2 over HTTP, driven by Triton's own client (tritonclient.http) over mTLS, plus raw edge cases."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from gateway.bench.photos import digit_png
from gateway.models.repository import load_repository
from gateway.preprocess.pipeline import prepare_photo
from tests.conftest import MODEL_REPO, REPO_ROOT, RunningGateway


@pytest.fixture(scope="module")
def client(gateway: RunningGateway):
    pki = gateway.pki
    client = triton.InferenceServerClient(
        urlsplit(gateway.base_url).netloc,
        ssl=True,
        ssl_options={
            "keyfile": str(pki.client_key("app")),
            "certfile": str(pki.client_cert("app")),
            "ca_certs": str(pki.ca_cert),
        },
    )
    yield client
    client.close()


def infer(client, batch: np.ndarray, binary: bool, model: str = "mnist", name: str = "image", datatype: str = "FP32"):
    tensor = triton.InferInput(name, list(batch.shape), datatype)
    tensor.set_data_from_numpy(batch, binary_data=binary)
    output = triton.InferRequestedOutput("probabilities", binary_data=binary)
    return client.infer(model, [tensor], outputs=[output], request_id="req-7")


def test_health_and_metadata(client) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mnist") and not client.is_model_ready("mnist", "7")
    assert not client.is_model_ready("cifar")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata("mnist")
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert metadata["versions"] == sorted(load_repository(MODEL_REPO)["mnist"].versions, key=int)
    config = client.get_model_config("mnist")
    assert config["max_batch_size"] == 64 and config["input"][0]["dims"] == ["1", "28", "28"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-tensors"])
def test_infer_with_and_without_binary_data(client, heldout_sample, binary: bool) -> None:
    x, y = heldout_sample
    batch = (x[5::50] / 255.0).astype(np.float32)[:, np.newaxis]
    result = infer(client, batch, binary)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (len(batch), 10)
    assert (probabilities.argmax(axis=1) == y[5::50]).mean() >= 0.8
    assert result.get_response()["id"] == "req-7"


def test_same_digit_same_answer_as_rest(gateway: RunningGateway, client, heldout_sample) -> None:
    photo = digit_png(heldout_sample[0][99])
    spec = load_repository(MODEL_REPO)["mnist"]
    tensor = prepare_photo(photo, spec, max_pixels=10**7).tensor[np.newaxis]
    kserve = infer(client, tensor, True).as_numpy("probabilities")[0]
    with gateway.client() as rest_client:
        rest = rest_client.post(
            "/api/v1/models/mnist/classify", content=photo, headers={"content-type": "image/png"}
        ).json()
    np.testing.assert_allclose(kserve, [rest["probabilities"][label] for label in spec.labels], rtol=1e-6)


@pytest.mark.parametrize(
    ("batch", "model", "name", "datatype", "message"),
    [
        (np.zeros((1, 28, 28), np.float32), "mnist", "image", "FP32", "expects [-1, 1, 28, 28]"),
        (np.zeros((1, 1, 28, 28), np.float64), "mnist", "image", "FP64", "datatype FP64"),
        (np.zeros((1, 1, 28, 28), np.float32), "mnist", "pixels", "FP32", "unknown input 'pixels'"),
        (np.zeros((1, 1, 28, 28), np.float32), "cifar", "image", "FP32", "unknown model 'cifar'"),
    ],
)
def test_bad_tensors_are_refused_precisely(client, batch, model, name, datatype, message) -> None:
    with pytest.raises(InferenceServerException) as raised:
        infer(client, batch, True, model, name, datatype)
    assert message in raised.value.message()


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b"{not json", {}, "not valid JSON"),
        (json.dumps({"inputs": []}).encode(), {}, "exactly one tensor"),
        (
            json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0] * 10}]}),
            {},
            "has 10 values",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [[1, 2], [3]]}]}
            ),
            {},
            "of one shape",
        ),
        (
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "shape": [1, 1, 28, 28],
                            "datatype": "FP32",
                            "parameters": {"binary_data_size": 3136},
                        }
                    ]
                }
            ).encode()
            + b"\x00" * 100,
            {"inference-header-content-length": "999999"},
            "does not fit",
        ),
    ],
    ids=["bad-json", "no-inputs", "too-few-values", "ragged", "lying-header-length"],
)
def test_malformed_infer_bodies_are_400(gateway: RunningGateway, body, headers, message) -> None:
    with gateway.client() as http:
        response = http.post("/v2/models/mnist/infer", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert response.headers["x-gateway-error-code"] == "invalid_input"
    gateway.assert_alive()


def test_binary_size_that_lies_is_400(gateway: RunningGateway) -> None:
    header = json.dumps(
        {
            "inputs": [
                {"name": "image", "shape": [2, 1, 28, 28], "datatype": "FP32", "parameters": {"binary_data_size": 3136}}
            ]
        }
    ).encode()
    with gateway.client() as http:
        response = http.post(
            "/v2/models/mnist/infer",
            content=header + b"\x00" * 3136,
            headers={"inference-header-content-length": str(len(header))},
        )
    assert response.status_code == 400
    assert "shape [2, 1, 28, 28] of FP32 needs 6272" in response.json()["error"]


def test_the_hotdog_model_answers_binary_tensors_like_rest(gateway: RunningGateway, client) -> None:
    photo = (REPO_ROOT / "model_repo/training/hotdog_photos/hotdog/hol_hot_dogs-0001.jpg").read_bytes()
    tensor = prepare_photo(photo, load_repository(MODEL_REPO)["hotdog"], max_pixels=10**8).tensor[np.newaxis]
    with gateway.client() as http:
        rest = http.post("/api/v1/models/hotdog/classify", content=photo, headers={"content-type": "image/jpeg"})
    probabilities = infer(client, tensor, binary=True, model="hotdog").as_numpy("probabilities")
    expected = [rest.json()["probabilities"][label] for label in ("hotdog", "not_hotdog")]
    np.testing.assert_allclose(probabilities[0], expected, rtol=1e-5)
    assert probabilities[0].argmax() == 0
