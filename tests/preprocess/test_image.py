import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
from PIL import Image, ImageOps

from gateway.core.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from gateway.preprocess.image import DecodedPhoto, decode_image, jpeg_frame
from tests.badinputs import image_bytes, truncated_jpeg

LIMIT = 40_000_000
REPO_ROOT = Path(__file__).resolve().parents[2]


def decode(data: bytes, min_side: int = 64, mode: str = "L") -> Image.Image:
    return decode_image(data, max_pixels=LIMIT, min_side=min_side, mode=mode).image


def heif_header(brand: bytes) -> bytes:
    """The first box of an ISO base media file (HEIC/AVIF), as a phone writes it."""
    return (24).to_bytes(4, "big") + b"ftyp" + brand + b"\0\0\0\0" + b"mif1heic" + b"\0" * 64


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
        (b"\xff\xd8\xff\xe0\x00\x10", InvalidInput, "truncated or corrupt"),  # found by tests/fuzz
        (image_bytes("GIF", mode="L"), UnsupportedMediaType, "the image is GIF"),
        (image_bytes("BMP"), UnsupportedMediaType, "the image is BMP"),
        (heif_header(b"heic"), UnsupportedMediaType, "the image is HEIC.*convert it"),
        (heif_header(b"avif"), UnsupportedMediaType, "the image is AVIF"),
    ],
)
def test_bad_images_raise_clear_errors(data: bytes, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        decode(data)


REFUSE_IN_A_FRESH_PROCESS = """
import json, os, sys
from gateway.core.errors import PayloadTooLarge
from gateway.preprocess.image import decode_image
from tests.badinputs import png_bomb
from tests.memory import peak_growth

bomb = png_bomb(int(sys.argv[1]), int(sys.argv[2]))
with peak_growth(os.getpid()) as growth:
    try:
        decode_image(bomb, max_pixels=int(sys.argv[3]), min_side=64, mode="L")
        refused = ""
    except PayloadTooLarge as exc:
        refused = exc.message
print(json.dumps({"refused": refused, "peak_kib": growth.peak_kib}))
"""


@pytest.mark.parametrize("size", [(50_000, 50_000), (10_000, 10_000), (7_000, 7_000)])
def test_decompression_bombs_are_refused_from_the_header(size: tuple[int, int]) -> None:
    """Refused before decoding: measured in a fresh process, whose peak RSS is reset right before the decode."""
    done = subprocess.run(
        [sys.executable, "-c", REFUSE_IN_A_FRESH_PROCESS, str(size[0]), str(size[1]), str(LIMIT)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout)
    assert "pixels" in result["refused"], result
    assert result["peak_kib"] < 50_000, f"peak RSS grew by {result['peak_kib']:,} KiB refusing a bomb"


def test_exif_orientation_is_applied() -> None:
    upright = Image.new("L", (40, 20), 255)
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", exif=exif)
    photo = decode_image(buffer.getvalue(), max_pixels=LIMIT, min_side=64, mode="L")
    assert photo.image.size == (40, 20)
    assert (photo.original_width, photo.original_height) == (40, 20)


def test_original_size_is_the_upload_not_the_draft() -> None:
    photo = decode_image(image_bytes("JPEG", (4000, 3000)), max_pixels=LIMIT, min_side=256, mode="RGB")
    assert photo.image.width < 4000
    assert (photo.original_width, photo.original_height) == (4000, 3000)


@pytest.mark.parametrize("source_mode", ["L", "CMYK", "P", "RGB"])
def test_any_colour_model_decodes_to_rgb(source_mode: str) -> None:
    source = Image.new("RGB", (32, 24), (200, 30, 40)).convert(source_mode)
    buffer = io.BytesIO()
    source.save(buffer, "JPEG" if source_mode in ("L", "CMYK") else "PNG")
    image = decode(buffer.getvalue(), min_side=64, mode="RGB")
    assert image.mode == "RGB"
    assert image.size == (32, 24)
    expected = source.convert("RGB").getpixel((16, 12))
    assert all(abs(a - b) <= 8 for a, b in zip(image.getpixel((16, 12)), expected, strict=True))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_transparent_pixels_are_laid_on_white(fmt: str) -> None:
    source = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    source.paste((255, 0, 0, 255), (0, 0, 10, 10))
    buffer = io.BytesIO()
    source.save(buffer, fmt, lossless=True)
    image = decode(buffer.getvalue(), min_side=64, mode="RGB")
    assert image.getpixel((15, 5)) == (255, 255, 255)
    assert image.getpixel((5, 5)) == (255, 0, 0)


def test_palette_transparency_is_laid_on_white() -> None:
    source = Image.new("P", (10, 10), 0)
    source.putpalette([0, 0, 0, 0, 0, 255])
    source.paste(1, (0, 0, 5, 10))
    buffer = io.BytesIO()
    source.save(buffer, "PNG", transparency=0)
    image = decode(buffer.getvalue(), min_side=64, mode="RGB")
    assert image.getpixel((8, 5)) == (255, 255, 255)
    assert image.getpixel((2, 5)) == (0, 0, 255)


def test_large_jpeg_is_draft_decoded_near_the_needed_size() -> None:
    big = image_bytes("JPEG", (4000, 3000))
    image = decode(big, min_side=256)
    assert 256 <= min(image.size) < 3000 / 4, image.size


def pillow_draft_decode(data: bytes, min_side: int, mode: str) -> np.ndarray:
    """What the gateway decoded with Pillow alone: draft decode, EXIF orientation, then the mode."""
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    divisor = max(1, min(width, height) // min_side)
    image.draft(mode, (width // divisor, height // divisor))
    image.load()
    return np.asarray(ImageOps.exif_transpose(image).convert(mode))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(("mode", "min_side"), [("L", 64), ("RGB", 64), ("L", 300), ("RGB", 150)])
def test_the_opencv_path_gives_pillows_pixels_bit_for_bit(orientation: int, mode: str, min_side: int) -> None:
    pixels = np.random.default_rng(orientation).integers(0, 256, (300, 520, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90, exif=exif, progressive=orientation % 2 == 0)
    data = buffer.getvalue()
    photo = decode_image(data, max_pixels=LIMIT, min_side=min_side, mode=mode)
    expected = pillow_draft_decode(data, min_side, mode)
    np.testing.assert_array_equal(photo.pixels, expected)
    upright = (520, 300) if orientation < 5 else (300, 520)
    assert (photo.original_width, photo.original_height) == upright


def test_jpeg_frame_reads_size_and_components_or_declines() -> None:
    assert jpeg_frame(image_bytes("JPEG", (64, 48))) == (64, 48, 3)
    grey = io.BytesIO()
    Image.new("L", (30, 20)).save(grey, "JPEG")
    assert jpeg_frame(grey.getvalue()) == (30, 20, 1)
    cmyk = io.BytesIO()
    Image.new("CMYK", (30, 20)).save(cmyk, "JPEG")
    assert jpeg_frame(cmyk.getvalue()) == (30, 20, 4)  # decoded by Pillow's path
    assert jpeg_frame(image_bytes("PNG")) is None
    assert jpeg_frame(image_bytes("JPEG", (64, 48))[:40]) is None  # cut before the frame header


def test_cmyk_jpegs_still_decode_to_rgb() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 40)).convert("CMYK").save(buffer, "JPEG")
    image = decode(buffer.getvalue(), mode="RGB")
    assert image.mode == "RGB" and image.size == (32, 24)


def test_the_pixel_limit_applies_to_the_jpeg_header_before_decoding() -> None:
    with pytest.raises(PayloadTooLarge, match="pixels"):
        decode_image(image_bytes("JPEG", (400, 300)), max_pixels=100_000, min_side=64, mode="L")


@pytest.mark.parametrize(
    ("size", "decoded"),
    [((4000, 3000), (500, 375)), ((480, 640), (120, 160)), ((700, 300), (175, 75)), ((300, 200), (300, 200))],
)
def test_a_long_side_is_kept_as_asked_and_both_decoders_agree(size: tuple[int, int], decoded: tuple[int, int]) -> None:
    """MNIST photos are analysed at 160 px on the long side: decoded at the smallest DCT scale that keeps it."""
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    photo = decode_image(buffer.getvalue(), max_pixels=LIMIT, min_side=1, mode="L", min_long_side=160)
    assert photo.image.size == decoded
    cmyk = io.BytesIO()
    Image.fromarray(pixels).convert("CMYK").save(cmyk, "JPEG", quality=90)  # Pillow's path
    by_pillow = decode_image(cmyk.getvalue(), max_pixels=LIMIT, min_side=1, mode="L", min_long_side=160)
    assert by_pillow.image.size == decoded


def colour_jpeg(size: tuple[int, int], orientation: int = 1, progressive: bool = False) -> bytes:
    """A noisy colour JPEG of ``size`` as stored, with an EXIF orientation (4:2:0, what phones write)."""
    pixels = np.random.default_rng(orientation).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90, exif=exif, progressive=progressive)
    return buffer.getvalue()


def decode_eighths(data: bytes, min_side: int = 256, **options) -> DecodedPhoto:
    return decode_image(data, max_pixels=LIMIT, min_side=min_side, mode="RGB", eighths=True, **options)


@pytest.mark.parametrize(
    ("short", "decoded"),
    [(448, 280), (600, 300), (900, 338), (3000, 375), (300, 300), (200, 200), (256, 256)],
)
def test_eighths_decode_at_the_smallest_fast_scale_that_keeps_the_short_side(short: int, decoded: int) -> None:
    """448 -> 5/8 (OpenCV: 8/8); 300 stays whole: 6/8 and 7/8 decode slower than 8/8 (image.FAST_EIGHTHS)."""
    for size in ((short * 4 // 3, short), (short, short * 4 // 3)):
        photo = decode_eighths(colour_jpeg(size))
        assert min(photo.pixels.shape[:2]) == decoded
        assert (photo.original_width, photo.original_height) == size


@pytest.mark.parametrize("orientation", range(1, 9))
def test_eighths_apply_the_exif_orientation_as_pillow_does(orientation: int) -> None:
    data = colour_jpeg((520, 300), orientation, progressive=orientation % 2 == 0)
    photo = decode_eighths(data, min_side=180)  # 5/8: 325 x 188 as stored
    stored = Image.fromarray(simplejpeg.decode_jpeg(data, "RGB", min_height=188))
    assert stored.size == (325, 188)
    stored.getexif()[0x0112] = orientation
    np.testing.assert_array_equal(photo.pixels, np.asarray(ImageOps.exif_transpose(stored)))
    assert photo.pixels.flags.c_contiguous
    assert (photo.original_width, photo.original_height) == ((520, 300) if orientation < 5 else (300, 520))


def test_grey_cmyk_and_digit_decodes_keep_the_power_of_two_path() -> None:
    grey, cmyk = io.BytesIO(), io.BytesIO()
    Image.new("L", (597, 448), 90).save(grey, "JPEG")
    Image.new("CMYK", (597, 448), (0, 80, 80, 0)).save(cmyk, "JPEG")
    for data in (grey.getvalue(), cmyk.getvalue()):
        np.testing.assert_array_equal(decode_eighths(data).pixels, decode(data, min_side=256, mode="RGB"))
    digit = decode_eighths(colour_jpeg((597, 448)), min_side=1, min_long_side=160)
    assert digit.pixels.shape == (224, 299, 3)  # 1/2, as without eighths (the long side kept)


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (truncated_jpeg(), InvalidInput, "truncated or corrupt"),
        (colour_jpeg((597, 448))[:-2000], InvalidInput, "truncated or corrupt"),
        (image_bytes("JPEG", (4000, 3000)), PayloadTooLarge, "pixels"),
    ],
)
def test_eighths_refuse_broken_files_as_the_other_paths_do(data: bytes, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        decode_image(data, max_pixels=10_000_000, min_side=256, mode="RGB", eighths=True)
