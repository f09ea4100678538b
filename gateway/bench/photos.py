"""Phone-style photos of handwritten digits, made from MNIST digits.

A real phone photo of a digit on paper is dark ink on light, unevenly lit, slightly
tinted paper, anywhere in a larger frame, JPEG-compressed, and often stored sideways
with an EXIF orientation tag. These functions make such photos from 28 x 28 MNIST
digits, deterministically from a seeded generator, for tests and accuracy reports.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

EXIF_ORIENTATION_TAG = 0x0112
STORED_TRANSPOSE = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}
"""EXIF orientation -> how the upright picture is stored, so exif_transpose restores it."""


def digit_png(digit: np.ndarray) -> bytes:
    """A clean MNIST digit (uint8 28 x 28, white on black) as a PNG file."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(digit, dtype=np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue()


def digit_photo(
    digit: np.ndarray, rng: np.random.Generator, *, orientation: int = 1, min_side: int = 300, fmt: str = "JPEG"
) -> bytes:
    """A 'photo' of ``digit`` in dark ink on lit paper (JPEG or PNG), stored with EXIF ``orientation``."""
    side = int(round(min_side * rng.uniform(0.45, 0.75)))
    ink_alpha = np.asarray(
        Image.fromarray(np.asarray(digit, np.uint8), "L").resize((side, side), Image.Resampling.BICUBIC),
        dtype=np.float32,
    )
    ink_alpha = np.clip(ink_alpha / 255.0, 0.0, 1.0)
    width = int(rng.integers(min_side, min_side * 3 // 2 + 1))
    height = int(rng.integers(min_side, min_side * 3 // 2 + 1))
    paper = rng.uniform(0.72, 0.95)
    ink = rng.uniform(0.05, 0.3)
    gradient = rng.uniform(0.0, 0.25)
    ramp = (
        np.linspace(0.0, 1.0, width, dtype=np.float32)[np.newaxis, :]
        * np.linspace(0.5, 1.0, height, dtype=np.float32)[:, np.newaxis]
    )
    canvas = paper * (1.0 - gradient * ramp)
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    region = canvas[top : top + side, left : left + side]
    canvas[top : top + side, left : left + side] = region - (region - ink) * ink_alpha
    canvas = canvas + rng.normal(0.0, 0.025, canvas.shape).astype(np.float32)
    tint = np.array([1.0, rng.uniform(0.93, 1.0), rng.uniform(0.85, 0.97)], np.float32)
    rgb = np.clip(canvas[..., np.newaxis] * tint * 255.0, 0, 255).astype(np.uint8)
    photo = Image.fromarray(rgb, "RGB")
    exif = Image.Exif()
    if orientation != 1:
        photo = photo.transpose(STORED_TRANSPOSE[orientation])
        exif[EXIF_ORIENTATION_TAG] = orientation
    buffer = io.BytesIO()
    if fmt == "JPEG":
        photo.save(buffer, "JPEG", quality=int(rng.integers(70, 92)), exif=exif)
    else:
        photo.save(buffer, fmt, exif=exif)
    return buffer.getvalue()
