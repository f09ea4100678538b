"""Photos prepared on the device: upright, downscaled to what the model needs, JPEG."""

from __future__ import annotations

import io

from PIL import Image

from gateway.bench.photo_path import DEFAULT_PHOTO, phone_jpeg
from mobile_client.prepare import original_upload, prepare_photo, target_short_side
from mobile_client.values import ModelInfo
from tests.conftest import REPO_ROOT

HOTDOG = ModelInfo("hotdog", "imagenet_rgb", 3, 224, 224, ("hotdog", "not_hotdog"))
MNIST = ModelInfo("mnist", "mnist_digit", 1, 28, 28)


def test_a_12_megapixel_phone_photo_becomes_an_upright_jpeg_of_twice_the_model_side() -> None:
    photo = phone_jpeg(REPO_ROOT / DEFAULT_PHOTO)  # 4000 x 3000 upright, stored sideways + EXIF 6
    upload = prepare_photo(photo, HOTDOG)
    with Image.open(io.BytesIO(upload.body)) as prepared:
        assert prepared.format == "JPEG" and prepared.mode == "RGB"
        assert prepared.size == upload.size == (597, 448)  # landscape again: the rotation was applied
        assert prepared.getexif().get(0x0112) is None
    assert len(upload.body) < len(photo) / 20 and upload.saved_bytes == len(photo) - len(upload.body)


def test_grey_models_get_grey_jpegs_and_small_photos_are_not_enlarged() -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (120, 90), (10, 20, 30, 0)).save(buffer, "PNG")
    upload = prepare_photo(buffer.getvalue(), MNIST)
    with Image.open(io.BytesIO(upload.body)) as prepared:
        assert prepared.mode == "L" and prepared.size == (120, 90)
        assert prepared.getpixel((5, 5)) > 250  # transparent -> white, as the gateway flattens it
    assert target_short_side(MNIST) == 224 and target_short_side(HOTDOG) == 448


def test_the_original_upload_is_the_bytes_as_taken() -> None:
    photo = (REPO_ROOT / DEFAULT_PHOTO).read_bytes()
    upload = original_upload(photo)
    assert upload.body == photo and upload.content_type == "image/jpeg" and upload.saved_bytes == 0
