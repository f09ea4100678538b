"""Safe photo decoding: format allow-list, pixel limit before decoding, EXIF orientation.

The pixel count is checked from the header, before any pixel is decoded, so a tiny
file declaring 50,000 x 50,000 pixels costs nothing. Large JPEGs are decoded at a
reduced scale (DCT scaling), so a 12-megapixel photo that becomes 28 x 28 is never
decoded at full size.

8-bit Huffman JPEGs in grey or colour, what phones and the mobile client send, take a
fast path: their frame header is read here (size, components: the pixel limit applies
before any decoding) and OpenCV decodes them (libjpeg-turbo with DCT scaling and EXIF
orientation, the GIL released throughout): the same pixels Pillow's draft decode gives,
bit for bit, for about half the CPU. Everything else (PNG, WebP, CMYK or 12-bit JPEGs,
transparency, and any file OpenCV refuses) takes Pillow's path, which also says
precisely what is wrong with a file it refuses.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gateway.core.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

ACCEPTED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
ACCEPTED_DESCRIPTION = "JPEG, PNG or WebP"
HEIF_BRANDS = {
    b"heic": "HEIC",
    b"heix": "HEIC",
    b"heim": "HEIC",
    b"heis": "HEIC",
    b"hevc": "HEIC",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
    b"avif": "AVIF",
    b"avis": "AVIF",
}
"""ISO base media brands of the photos phones save by default (iPhone: HEIC), which Pillow cannot decode."""
BACKGROUND = (255, 255, 255)
"""Transparent pixels are laid on white, as a viewer shows them."""
OPENCV_FLAGS = {
    ("L", 1): cv2.IMREAD_GRAYSCALE,
    ("L", 2): cv2.IMREAD_REDUCED_GRAYSCALE_2,
    ("L", 4): cv2.IMREAD_REDUCED_GRAYSCALE_4,
    ("L", 8): cv2.IMREAD_REDUCED_GRAYSCALE_8,
    ("RGB", 1): cv2.IMREAD_COLOR,
    ("RGB", 2): cv2.IMREAD_REDUCED_COLOR_2,
    ("RGB", 4): cv2.IMREAD_REDUCED_COLOR_4,
    ("RGB", 8): cv2.IMREAD_REDUCED_COLOR_8,
}
"""(mode, DCT scale) -> imdecode flags (EXIF orientation is applied unless told otherwise)."""

cv2.setNumThreads(1)  # the gateway decodes many photos at once (one per preprocess thread), not one on many


@dataclass(frozen=True)
class DecodedPhoto:
    """An upright photo in the requested mode, and the size of the upload it came from (upright too)."""

    pixels: np.ndarray
    """uint8 [height, width] for mode L, [height, width, 3] for RGB."""
    original_width: int
    original_height: int

    @property
    def image(self) -> Image.Image:
        """The same pixels as a Pillow image (for tools and tests; the gateway works on ``pixels``)."""
        return Image.fromarray(self.pixels)


def _detect_other_format(data: bytes) -> str | None:
    """Name the format of an image the gateway does not accept, if it is an image at all."""
    if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:
        return HEIF_BRANDS[data[8:12]]
    try:
        with Image.open(io.BytesIO(data)) as other:
            return other.format
    except Exception:  # anything Pillow cannot identify at all
        return None


def _flatten(image: Image.Image, mode: str) -> Image.Image:
    """Convert to ``mode``; a photo with transparency is first laid on a white background."""
    if image.mode == mode:
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat if mode == "RGB" else flat.convert(mode)
    return image.convert(mode)


def decode_image(data: bytes, *, max_pixels: int, min_side: int, mode: str, min_long_side: int = 0) -> DecodedPhoto:
    """Decode ``data`` into an upright image in ``mode`` whose short side is at least ``min_side`` and
    whose long side is at least ``min_long_side`` where the source allows (JPEG draft scaling only ever
    shrinks by powers of two).

    Raises InvalidInput, UnsupportedMediaType or PayloadTooLarge with a message a person can act on.
    """
    if not data:
        raise InvalidInput(f"the request has no image: send the photo bytes ({ACCEPTED_DESCRIPTION})")
    frame = jpeg_frame(data)
    if frame is not None and frame[2] in (1, 3) and mode in ("L", "RGB"):
        width, height, _ = frame
        if 0 < width * height <= min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels):
            scale = _dct_scale((width, height), min_side, min_long_side)
            decoded = _decode_jpeg_opencv(data, width, height, scale, mode)
            if decoded is not None:
                return decoded
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
    except UnidentifiedImageError:
        other = _detect_other_format(data)
        if other:
            raise UnsupportedMediaType(
                f"the image is {other}; the gateway accepts {ACCEPTED_DESCRIPTION} (convert it before sending)"
            ) from None
        raise InvalidInput(f"the body is not a {ACCEPTED_DESCRIPTION} image (its header is not recognised)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"the image declares too many pixels: {exc}") from None
    except Exception as exc:  # a recognised header whose first blocks are cut or corrupt
        raise InvalidInput(f"the image data is truncated or corrupt: {exc}") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidInput(f"the image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"the image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}. "
            "Downscale it before sending (the model needs far fewer)"
        )
    try:
        if image.format == "JPEG":
            scale = _dct_scale((width, height), min_side, min_long_side)
            image.draft(mode if mode in ("L", "RGB") else None, (width // scale, height // scale))
        image.load()
        turned = image.size
        ImageOps.exif_transpose(image, in_place=True)
        if image.size != turned:
            width, height = height, width
        return DecodedPhoto(np.asarray(_flatten(image, mode)), width, height)
    except Exception as exc:  # any failure decoding untrusted bytes is the input's fault, not ours
        raise InvalidInput(f"the {image.format} data is truncated or corrupt: {exc}") from None


def _draft_size(size: tuple[int, int], min_side: int) -> tuple[int, int]:
    """The size asked of a JPEG draft decode: the photo shrunk by the whole factor that keeps ``min_side``."""
    divisor = max(1, min(size) // max(min_side, 1))
    return (size[0] // divisor, size[1] // divisor)


def _dct_scale(size: tuple[int, int], min_side: int, min_long_side: int = 0) -> int:
    """The JPEG DCT scale (1, 2, 4 or 8) that keeps ``min_side`` (as Pillow's draft decode picks it for the
    short side) and ``min_long_side`` (the long side, rounded up as libjpeg scales), the same for both decoders."""
    wanted = _draft_size(size, min_side)
    ratio = min(size[0] // wanted[0], size[1] // wanted[1])
    return next(s for s in (8, 4, 2, 1) if s <= ratio and -(-max(size) // s) >= min_long_side or s == 1)


FRAME_MARKERS = {0xC0, 0xC1, 0xC2}
"""Start-of-frame markers of baseline, extended and progressive Huffman JPEGs (what cameras write)."""
STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD8)}
"""Markers without a length field (TEM, RST0-7)."""


def jpeg_segments(data: bytes) -> Iterator[tuple[int, int]]:
    """(marker, offset of its 0xFF) of each marker segment with a length, from after the SOI up to and
    including the first scan (SOS) or end of image (EOI); fill bytes and markers without a length are
    stepped over. Stops where no marker follows a segment (not a JPEG there, or a file cut short)."""
    position, end = 2, len(data)
    while position + 4 <= end and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in STANDALONE_MARKERS:
            position += 2
            continue
        yield marker, position
        if marker in (0xD9, 0xDA):
            return
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")


def jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from the frame header of an 8-bit Huffman JPEG, read without Pillow;
    None for anything else (other formats, other JPEG flavours, a header cut short): Pillow's path then
    reads it, and refuses it with the precise reason if it must."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    for marker, position in jpeg_segments(data):
        if marker in FRAME_MARKERS:
            if position + 10 > len(data) or data[position + 4] != 8:
                return None
            height = int.from_bytes(data[position + 5 : position + 7], "big")
            width = int.from_bytes(data[position + 7 : position + 9], "big")
            return width, height, data[position + 9]
        if 0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xCC) or marker in (0xD9, 0xDA):
            return None  # another frame type (lossless, arithmetic, hierarchical), or scan data before a frame
    return None


def _decode_jpeg_opencv(data: bytes, width: int, height: int, scale: int, mode: str) -> DecodedPhoto | None:
    """Decode at 1/``scale`` with EXIF orientation applied; None when OpenCV refuses the file."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), OPENCV_FLAGS[(mode, scale)])
    if pixels is None:
        return None  # Pillow's path says precisely what is wrong
    stored = (-(-height // scale), -(-width // scale))
    if pixels.shape[:2] != stored:  # turned by its EXIF orientation (5 to 8): the upright size is swapped
        width, height = height, width
    if mode == "RGB":
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    return DecodedPhoto(pixels, width, height)
