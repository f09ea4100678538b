import io
import resource

import pytest
from PIL import Image

from gateway.core.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from gateway.preprocess.image import decode_image
from tests.badinputs import image_bytes, png_bomb, truncated_jpeg

LIMIT = 40_000_000


def decode(data: bytes, min_side: int = 64, mode: str = "L") -> Image.Image:
    return decode_image(data, max_pixels=LIMIT, min_side=min_side, mode=mode)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_accepted_formats_decode_to_the_requested_mode(fmt: str) -> None:
    image = decode(image_bytes(fmt), mode="L")
    assert image.mode == "L"
    assert image.size == (64, 48)


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", InvalidInput, "has no image"),
        (b"this is not an image at all", InvalidInput, "not a JPEG, PNG or WebP"),
        (truncated_jpeg(), InvalidInput, "truncated or corrupt"),
        (image_bytes("GIF", mode="L"), UnsupportedMediaType, "the image is GIF"),
        (image_bytes("BMP"), UnsupportedMediaType, "the image is BMP"),
    ],
)
def test_bad_images_raise_clear_errors(data: bytes, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        decode(data)


@pytest.mark.parametrize("size", [(50_000, 50_000), (10_000, 10_000), (7_000, 7_000)])
def test_decompression_bombs_are_refused_from_the_header(size: tuple[int, int]) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(PayloadTooLarge, match="pixels"):
        decode(png_bomb(*size))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 50_000, f"peak RSS grew by {grown_kib} KiB refusing a bomb"


def test_exif_orientation_is_applied() -> None:
    upright = Image.new("L", (40, 20), 255)
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", exif=exif)
    assert decode(buffer.getvalue()).size == (40, 20)


def test_large_jpeg_is_draft_decoded_near_the_needed_size() -> None:
    big = image_bytes("JPEG", (4000, 3000))
    image = decode(big, min_side=256)
    assert 256 <= min(image.size) < 3000 / 4, image.size
