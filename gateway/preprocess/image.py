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
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from gateway.core.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from gateway.preprocess.jpeg_header import exif_orientation, jpeg_frame, upright

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

FAST_EIGHTHS = (1, 2, 3, 4, 5, 8)
"""The JPEG scales M/8 worth decoding at. libjpeg-turbo scales by any M/8, but only 1/8, 2/8, 4/8 and 8/8 have
SIMD IDCTs; at 5/8 to 7/8 the luma IDCT is plain C and 4:2:0 chroma takes a 10x10 to 14x14 IDCT. Measured on a
448 x 597 upload (one core): 3/8 0.9 ms, 4/8 0.8, 5/8 1.1-1.3, 6/8 1.3-1.6, 7/8 1.9-2.0, 8/8 1.0. 5/8 still pays
(it shrinks the resize after it by 0.5 ms); 6/8 and 7/8 cost more than they save, so 8/8 is decoded instead."""

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


def decode_image(
    data: bytes, *, max_pixels: int, min_side: int, mode: str, min_long_side: int = 0, eighths: bool = False
) -> DecodedPhoto:
    """Decode ``data`` into an upright image in ``mode`` whose short side is at least ``min_side`` and
    whose long side is at least ``min_long_side`` where the source allows (JPEG draft scaling only ever
    shrinks by powers of two; with ``eighths``, a colour JPEG decoded as RGB may shrink by M/8, see
    ``_decode_jpeg_eighths``).

    Raises InvalidInput, UnsupportedMediaType or PayloadTooLarge with a message a person can act on.
    """
    if not data:
        raise InvalidInput(f"the request has no image: send the photo bytes ({ACCEPTED_DESCRIPTION})")
    frame = jpeg_frame(data)
    if frame is not None and frame[2] in (1, 3) and mode in ("L", "RGB"):
        width, height, components = frame
        if 0 < width * height <= min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels):
            if eighths and components == 3 and mode == "RGB" and min_long_side == 0:
                decoded = _decode_jpeg_eighths(data, width, height, min_side)
                if decoded is not None:
                    return decoded
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


def _decode_jpeg_eighths(data: bytes, width: int, height: int, min_side: int) -> DecodedPhoto | None:
    """A colour JPEG as RGB at the smallest scale M/8 in FAST_EIGHTHS that keeps ``min_side`` on the short side,
    EXIF orientation applied; None when libjpeg-turbo (simplejpeg) reports anything wrong with the file.

    OpenCV and Pillow only scale by 1/2, 1/4, 1/8: a 448-px upload is decoded whole and its 392-px centre
    square resized to 224, where 5/8 gives 280 px and a square of 245."""
    short = min(width, height)
    eighths = next((m for m in FAST_EIGHTHS if -(-short * m // 8) >= min_side), 8)
    stored = (-(-height * eighths // 8), -(-width * eighths // 8))
    minimum = {"min_width": stored[1]} if width <= height else {"min_height": stored[0]}
    try:
        pixels = simplejpeg.decode_jpeg(data, "RGB", strict=True, **minimum)
    except ValueError:
        return None  # the other paths decode what can be decoded, or say precisely what is wrong
    if pixels.shape[:2] != stored:
        return None
    orientation = exif_orientation(data)
    size = (height, width) if orientation >= 5 else (width, height)
    return DecodedPhoto(upright(pixels, orientation), *size)
