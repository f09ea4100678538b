"""Safe photo decoding: format allow-list, pixel limit before decoding, EXIF orientation.

The pixel count is checked from the header, before any pixel is decoded, so a tiny
file declaring 50,000 x 50,000 pixels costs nothing. Large JPEGs are decoded in draft
mode (DCT scaling), so a 12-megapixel photo that becomes 28 x 28 is never decoded at
full size.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

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


@dataclass(frozen=True)
class DecodedPhoto:
    """An upright photo in the requested mode, and the size of the upload it came from (upright too)."""

    image: Image.Image
    original_width: int
    original_height: int


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


def decode_image(data: bytes, *, max_pixels: int, min_side: int, mode: str) -> DecodedPhoto:
    """Decode ``data`` into an upright image in ``mode`` whose short side is at least ``min_side``
    where the source allows (JPEG draft scaling only ever shrinks by powers of two).

    Raises InvalidInput, UnsupportedMediaType or PayloadTooLarge with a message a person can act on.
    """
    if not data:
        raise InvalidInput(f"the request has no image: send the photo bytes ({ACCEPTED_DESCRIPTION})")
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
            scale = max(1, min(width, height) // max(min_side, 1))
            image.draft(mode if mode in ("L", "RGB") else None, (width // scale, height // scale))
        image.load()
        turned = image.size
        ImageOps.exif_transpose(image, in_place=True)
        if image.size != turned:
            width, height = height, width
        return DecodedPhoto(_flatten(image, mode), width, height)
    except Exception as exc:  # any failure decoding untrusted bytes is the input's fault, not ours
        raise InvalidInput(f"the {image.format} data is truncated or corrupt: {exc}") from None
