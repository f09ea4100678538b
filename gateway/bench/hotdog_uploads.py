"""Several distinct ways a hot dog photo reaches the gateway, made from the labelled photos.

Each way stands for one route from a phone's camera to an upload: how the picture is
framed and sized, whether an app edited its tone (exposure, contrast, gamma, levels,
sharpening, saturation), and which encoder wrote it (JPEG at 4:2:0, 4:2:2 or 4:4:4, at
which quality; lossy or lossless WebP; PNG), upright or sideways with an EXIF tag. Every
draw is random within the way's style, from a seeded generator.

The ways are split in two, and the split is part of the API (as ``gateway.bench.renderers``
splits the digit renderers):

- ``TRAINING_WAYS`` build the hot dog photo and tensor baselines of the skew monitor
  (``model_repo/training/build_monitoring.py``);
- ``HELD_OUT_WAYS`` are never used for a baseline: ``gateway bench skew`` measures the
  false alarms on them. Their edits appear in held-out ways only: a square crop, a night
  mode's blur, a vignette; and none shares its chain of edits and encoder with a training
  way. (The last three training ways were the first held-out set; measured, their
  auto-levels edit raised false alarms on ``contrast``, so they joined the reference and
  this set was made afresh, after the reference was final.)

Every way starts from the same 347 labelled photos: a held-out way is a new route for
those photos, not new photos.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from mobile_client.prepare import prepare_photo as mobile_prepare
from mobile_client.values import ModelInfo

Way = Callable[[bytes, Image.Image, np.random.Generator], bytes]
"""(the photo as stored, its upright RGB pixels, rng) -> the bytes uploaded."""

_EXIF_ORIENTATION = 0x0112
_STORED_AS = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
"""EXIF orientation -> the transpose that turns the upright picture into what the sensor stored."""
_HOTDOG_INFO = ModelInfo("hotdog", "imagenet_rgb", 3, 224, 224)


def _scaled(image: Image.Image, low: float, high: float, rng: np.random.Generator) -> Image.Image:
    scale = rng.uniform(low, high)
    return image.resize((max(64, round(image.width * scale)), max(64, round(image.height * scale))))


def _jpeg(image: Image.Image, quality: int, orientation: int = 1, **options) -> bytes:
    exif = Image.Exif()
    if orientation != 1:
        image = image.transpose(_STORED_AS[orientation])
        exif[_EXIF_ORIENTATION] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, exif=exif, **options)
    return buffer.getvalue()


def _encoded(image: Image.Image, format_: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format_, **options)
    return buffer.getvalue()


def _gamma(image: Image.Image, gamma: float) -> Image.Image:
    table = [round(255 * (i / 255) ** gamma) for i in range(256)]
    return image.point(table * 3)


# Training ways: the baseline's reference.


def as_uploaded(data: bytes, upright: Image.Image, rng: np.random.Generator) -> bytes:
    """The photo's own bytes, as the phone stored it."""
    return data


def mobile_client(data: bytes, upright: Image.Image, rng: np.random.Generator) -> bytes:
    """As the project's mobile client sends it: upright, downscaled, JPEG 85."""
    return mobile_prepare(data, _HOTDOG_INFO).body


def phone_stored(data: bytes, upright: Image.Image, rng: np.random.Generator) -> bytes:
    """As a phone stores it: smaller, sideways with an EXIF tag (6), JPEG 55-92."""
    return _jpeg(_scaled(upright, 0.5, 1.0, rng), int(rng.integers(55, 93)), 6)


def edited_png(data: bytes, upright: Image.Image, rng: np.random.Generator) -> bytes:
    """Exposure and contrast edited in a photo app (x0.85-1.15, x0.9-1.1), exported as PNG."""
    image = ImageEnhance.Brightness(_scaled(upright, 0.4, 0.9, rng)).enhance(rng.uniform(0.85, 1.15))
    return _encoded(ImageEnhance.Contrast(image).enhance(rng.uniform(0.9, 1.1)), "PNG")


def messenger_webp(data: bytes, upright: Image.Image, rng: np.random.Generator) -> bytes:
    """Sent through a messenger: downscaled, exposure x0.9-1.1, lossy WebP 50-90."""
    image = ImageEnhance.Brightness(_scaled(upright, 0.3, 0.8, rng)).enhance(rng.uniform(0.9, 1.1))
    return _encoded(image, "WEBP", quality=int(rng.integers(50, 91)))


def editor_jpeg_444(data: bytes, upright: Image.Image, rng: np.random.Generator) -> bytes:
    """Exported from a desktop editor: gamma 0.85-1.15, JPEG 4:4:4 at 88-97."""
    image = _gamma(_scaled(upright, 0.5, 1.0, rng), rng.uniform(0.85, 1.15))
    return _jpeg(image, int(rng.integers(88, 98)), subsampling=0)


# Ways measured as held out first (bench skew, 2026-12-02): their false alarms (contrast, from the
# auto-levels) showed what the reference lacked, so they joined it and a fresh held-out set was made.


def cropped_progressive(data: bytes, upright: Image.Image, rng: np.random.Generator) -> bytes:
    """Cropped to 80-100% in a gallery app, re-saved as progressive JPEG 4:2:2 at 60-90."""
    crop = rng.uniform(0.8, 1.0)
    width, height = upright.size
    left, top = rng.uniform(0, 1 - crop) * width, rng.uniform(0, 1 - crop) * height
    image = upright.crop((int(left), int(top), int(left + crop * width), int(top + crop * height)))
    return _jpeg(_scaled(image, 0.4, 0.9, rng), int(rng.integers(60, 91)), subsampling=1, progressive=True)


def auto_enhanced(data: bytes, upright: Image.Image, rng: np.random.Generator) -> bytes:
    """An app's one-tap enhance: levels stretched (0-1% clipped), colour x1.0-1.15, lossless WebP."""
    image = ImageOps.autocontrast(_scaled(upright, 0.3, 0.7, rng), cutoff=float(rng.uniform(0.0, 1.0)))
    image = ImageEnhance.Color(image).enhance(rng.uniform(1.0, 1.15))
    return _encoded(image, "WEBP", lossless=True)


def sharpened_sideways(data: bytes, upright: Image.Image, rng: np.random.Generator) -> bytes:
    """A camera app that sharpens (unsharp mask 30-80%) and stores the picture turned the other way or
    upside down (EXIF 8 or 3), JPEG 70-95."""
    image = _scaled(upright, 0.4, 1.0, rng).filter(
        ImageFilter.UnsharpMask(radius=2, percent=int(rng.integers(30, 81)), threshold=3)
    )
    return _jpeg(image, int(rng.integers(70, 96)), int(rng.choice([3, 8])))


def square_feed(data: bytes, upright: Image.Image, rng: np.random.Generator) -> bytes:
    """Cropped square for a social feed (the square anywhere along the long side), JPEG 4:2:0 at 75-92."""
    side = min(upright.size)
    left = int(rng.uniform(0, upright.width - side + 1))
    top = int(rng.uniform(0, upright.height - side + 1))
    image = _scaled(upright.crop((left, top, left + side, top + side)), 0.4, 0.9, rng)
    return _jpeg(image, int(rng.integers(75, 93)), subsampling=2, optimize=True)


def night_mode(data: bytes, upright: Image.Image, rng: np.random.Generator) -> bytes:
    """A night mode's noise reduction (Gaussian blur 0.5-1.2 px) and lifted exposure (x1.0-1.1), WebP 40-75."""
    image = _scaled(upright, 0.4, 0.9, rng).filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.2))))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(1.0, 1.1))
    return _encoded(image, "WEBP", quality=int(rng.integers(40, 76)))


def vignette_filter(data: bytes, upright: Image.Image, rng: np.random.Generator) -> bytes:
    """A vignette filter (corners darkened by 0-25%), exported as PNG."""
    image = _scaled(upright, 0.3, 0.8, rng)
    y, x = np.mgrid[0 : image.height, 0 : image.width]
    radius = np.hypot((x - image.width / 2) / (image.width / 2), (y - image.height / 2) / (image.height / 2))
    gain = 1.0 - rng.uniform(0.0, 0.25) * np.clip(radius / np.sqrt(2), 0.0, 1.0) ** 2
    pixels = np.asarray(image, np.float32) * gain[..., np.newaxis]
    return _encoded(Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB"), "PNG")


TRAINING_WAYS: dict[str, Way] = {
    "as uploaded": as_uploaded,
    "mobile client": mobile_client,
    "phone stored": phone_stored,
    "edited, PNG": edited_png,
    "messenger, WebP": messenger_webp,
    "editor, JPEG 4:4:4": editor_jpeg_444,
    "cropped, progressive JPEG 4:2:2": cropped_progressive,
    "auto-enhanced, lossless WebP": auto_enhanced,
    "sharpened, stored upside down or turned": sharpened_sideways,
}
HELD_OUT_WAYS: dict[str, Way] = {
    "square for a feed, JPEG 4:2:0": square_feed,
    "night mode, WebP 40-75": night_mode,
    "vignette filter, PNG": vignette_filter,
}


def upright_rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def every_way(photos: list[bytes], ways: dict[str, Way], seed: int) -> tuple[list[bytes], list[int], list[int]]:
    """Each photo through each way: (uploads, way index, photo index), photo by photo."""
    rng = np.random.default_rng(seed)
    uploads, kinds, sources = [], [], []
    for index, data in enumerate(photos):
        upright = upright_rgb(data)
        for kind, way in enumerate(ways.values()):
            uploads.append(way(data, upright, rng))
            kinds.append(kind)
            sources.append(index)
    return uploads, kinds, sources


def one_way_each(
    photos: list[bytes],
    ways: dict[str, Way],
    rng: np.random.Generator,
    shift: Callable[[Image.Image], Image.Image] | None = None,
) -> tuple[list[bytes], list[int]]:
    """Each photo through one of ``ways`` picked at random (after ``shift`` of its pixels, if any):
    (uploads, way index). One draw of live traffic arriving in those ways."""
    uploads, kinds = [], []
    for data in photos:
        upright = upright_rgb(data)
        if shift is not None:  # the shifted picture as the phone stored it, then the way's route
            upright = shift(upright)
            data = _jpeg(upright, 92)
        kind = int(rng.integers(len(ways)))
        uploads.append(list(ways.values())[kind](data, upright, rng))
        kinds.append(kind)
    return uploads, kinds
