"""The hot dog model: REST photos (any colour model, phone-sized, sideways), gRPC Classify and
KServe v2 tensors over gRPC (KServe HTTP: test_kserve_http.py; TF Serving: test_tfserving.py)."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from PIL import Image

from gateway.bench.photo_path import phone_jpeg
from gateway.models.repository import load_repository
from gateway.preprocess.pipeline import prepare_photo
from gateway.v1 import classifier_pb2, classifier_pb2_grpc
from tests.conftest import MODEL_REPO, REPO_ROOT, RunningGateway

PHOTOS = REPO_ROOT / "model_repo/training/hotdog_photos"
HOTDOG = PHOTOS / "hotdog/hol_hot_dogs-0001.jpg"
NOT_HOTDOG = PHOTOS / "not_hotdog/maxcap_action-adventure-bicycle-71104.jpg"


def classify(gateway: RunningGateway, photo: bytes, content_type: str = "image/jpeg"):
    with gateway.client() as client:
        return client.post("/api/v1/models/hotdog/classify", content=photo, headers={"content-type": content_type})


def reencoded(path, mode: str, fmt: str) -> bytes:
    """The same photo in another colour model and format, as other cameras and apps send it."""
    with Image.open(path) as photo:
        converted = photo.convert(mode)
    buffer = io.BytesIO()
    converted.save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(("path", "label"), [(HOTDOG, "hotdog"), (NOT_HOTDOG, "not_hotdog")])
def test_a_real_photo_is_classified(gateway: RunningGateway, path, label: str) -> None:
    response = classify(gateway, path.read_bytes())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["model"], answer["version"], answer["label"]) == ("hotdog", "1", label)
    assert set(answer["probabilities"]) == {"hotdog", "not_hotdog"}
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert answer["probabilities"][label] > 0.5


def test_a_12_megapixel_phone_photo_stored_sideways(gateway: RunningGateway) -> None:
    response = classify(gateway, phone_jpeg(HOTDOG, quality=75))  # 1.2 MB: under the test gateway's body limit
    assert response.status_code == 200, response.text
    assert response.json()["label"] == "hotdog"


@pytest.mark.parametrize(
    ("mode", "fmt", "content_type"),
    [
        ("CMYK", "JPEG", "image/jpeg"),
        ("L", "JPEG", "image/jpeg"),
        ("P", "PNG", "image/png"),
        ("RGBA", "WEBP", "image/webp"),
    ],
)
def test_other_colour_models_are_answered(gateway: RunningGateway, mode: str, fmt: str, content_type: str) -> None:
    response = classify(gateway, reencoded(HOTDOG, mode, fmt), content_type)
    assert response.status_code == 200, response.text
    assert response.json()["label"] in ("hotdog", "not_hotdog")


@pytest.mark.parametrize("content_type", ["image/heic", "image/jpeg"])
def test_a_heic_photo_is_415_with_what_to_do(gateway: RunningGateway, content_type: str) -> None:
    heic = (24).to_bytes(4, "big") + b"ftypheic" + b"\0" * 4 + b"mif1heic" + b"\0" * 4000
    response = classify(gateway, heic, content_type)
    assert response.status_code == 415
    message = response.json()["error"]["message"]
    assert "HEIC" in message and "convert" in message and "JPEG" in message


def test_grpc_classify_and_kserve_tensors_agree_with_rest(gateway: RunningGateway, kserve_grpc) -> None:
    photo = HOTDOG.read_bytes()
    rest = classify(gateway, photo).json()
    expected = [rest["probabilities"][label] for label in ("hotdog", "not_hotdog")]
    with gateway.grpc_channel() as channel:
        answer = classifier_pb2_grpc.ClassifierStub(channel).Classify(
            classifier_pb2.ClassifyRequest(model="hotdog", image=photo), timeout=30
        )
    assert answer.label == rest["label"]
    assert [answer.probabilities[label] for label in ("hotdog", "not_hotdog")] == pytest.approx(expected, rel=1e-5)

    spec = load_repository(MODEL_REPO)["hotdog"]
    tensor = prepare_photo(photo, spec, max_pixels=10**8).tensor[np.newaxis]
    tensor_input = triton.InferInput("image", list(tensor.shape), "FP32")
    tensor_input.set_data_from_numpy(tensor)
    probabilities = kserve_grpc.infer("hotdog", [tensor_input]).as_numpy("probabilities")[0]
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5)


def test_a_digit_sized_tensor_for_hotdog_is_invalid_argument(kserve_grpc) -> None:
    tensor_input = triton.InferInput("image", [1, 1, 28, 28], "FP32")
    tensor_input.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.float32))
    with pytest.raises(triton.InferenceServerException) as refused:
        kserve_grpc.infer("hotdog", [tensor_input])
    assert refused.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
    assert "3, 224, 224" in refused.value.message()
