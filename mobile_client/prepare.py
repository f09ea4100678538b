"""Prepare a photo on the device: upright, no larger than the model needs, re-encoded as JPEG.

A 12 MP phone photo is 2-5 MB; the gateway turns it into a 224 x 224 (hot dog) or a
28 x 28 (MNIST) tensor. Uploading it whole wastes the uplink, the phone's battery and
the gateway's CPU (JPEG entropy decoding grows with the file). The client downscales to
a short side of ``SHORT_SIDE_FACTOR x`` the model's input side, which leaves the
gateway's own resize/crop something to work with, applies the EXIF orientation (the
upright pixels travel; no tag is needed), and re-encodes as JPEG at ``quality``.
"""

from __future__ import annotations

import io
import time

from PIL import Image, ImageOps

from mobile_client.values import ModelInfo, Upload

DEFAULT_QUALITY = 85
SHORT_SIDE_FACTOR = {"imagenet_rgb": 2.0, "mnist_digit": 8.0}
"""Short side to keep, as a multiple of the model's input side. The ImageNet path resizes the short side
to 256 and crops 224, so 2 x 224 keeps full detail. The MNIST path crops to the ink before fitting it in
20 x 20, and the digit is only part of the frame, so it keeps more."""
DEFAULT_FACTOR = 2.0


def target_short_side(info: ModelInfo) -> int:
    factor = SHORT_SIDE_FACTOR.get(info.preprocessing, DEFAULT_FACTOR)
    return int(round(factor * min(info.height, info.width)))


def prepare_photo(data: bytes, info: ModelInfo, *, quality: int = DEFAULT_QUALITY) -> Upload:
    """``data`` (any format Pillow reads) as an upright JPEG whose short side is at most the model's target."""
    started = time.perf_counter()
    short_side = target_short_side(info)
    with Image.open(io.BytesIO(data)) as image:
        orientation = image.getexif().get(0x0112, 1)
        width, height = image.size
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        scale = short_side / min(width, height)
        if image.format == "JPEG" and scale < 1:
            # Decode at 1/2, 1/4 or 1/8 scale straight from the DCT (as phones' own decoders can).
            image.draft("RGB", (max(1, int(image.width * scale)), max(1, int(image.height * scale))))
        upright = ImageOps.exif_transpose(image)
        mode = "L" if info.channels == 1 else "RGB"
        upright = _flatten(upright).convert(mode)
    if min(upright.size) > short_side:
        ratio = short_side / min(upright.size)
        size = (max(1, round(upright.width * ratio)), max(1, round(upright.height * ratio)))
        upright = upright.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    buffer = io.BytesIO()
    upright.save(buffer, "JPEG", quality=quality, optimize=True)
    return Upload(
        buffer.getvalue(), "image/jpeg", len(data), upright.size, prepare_ms=(time.perf_counter() - started) * 1000
    )


def _flatten(image: Image.Image) -> Image.Image:
    """Transparent pixels on white (as the gateway does), so a PNG logo does not turn black."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba)
    return image


def original_upload(data: bytes) -> Upload:
    """The photo as taken, unchanged (what an app without this client would send)."""
    with Image.open(io.BytesIO(data)) as image:
        fmt = (image.format or "JPEG").lower()
        size = image.size
    return Upload(data, f"image/{'jpeg' if fmt == 'jpeg' else fmt}", len(data), size)
