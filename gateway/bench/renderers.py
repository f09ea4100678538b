"""Several distinct ways a phone photographs a handwritten digit, made from 28 x 28 MNIST digits.

Each renderer stands for one kind of writing and photographing: its pen (colour, width,
grain), its paper (tone, texture, ruling), its light (gradient, lamp, shadow of the
phone), its camera (rotation of up to 10 degrees, blur, noise, JPEG quality 55-92 or a
PNG, picture size) and how the phone stores the picture (sideways with an EXIF
orientation tag, or upright). Every draw is random within the renderer's style, from a
seeded generator, so a renderer and a seed always give the same bytes.

The renderers are split in two, and the split is part of the API:

- ``TRAINING_RENDERERS`` build the photo baselines of the skew monitor and augment the
  training data;
- ``HELD_OUT_RENDERERS`` are never used for either: they make evaluation sets only, so
  a figure measured on them is measured on photos nothing was tuned to.

They share no code with ``gateway.bench.photos`` (the project's older generator), which
is a third, independent source of evaluation photos.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

Renderer = Callable[[np.ndarray, np.random.Generator], bytes]
"""(digit: 28 x 28 float in [0, 1], white ink on black; rng) -> the encoded photo a phone uploads."""

_DRAW_SIDE = 360
"""Pictures are drawn at most this many pixels on the short side, then enlarged."""
_EXIF_ORIENTATION = 0x0112
_STORED_AS = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
"""EXIF orientation -> the transpose that turns the upright picture into what the sensor stored."""


@dataclass(frozen=True)
class _Style:
    """The ranges one renderer draws from; (low, high) pairs are uniform draws."""

    inks: tuple[tuple[float, float, float], ...]
    """RGB ink colours in [0, 1], one picked per photo."""
    paper: tuple[tuple[float, float, float], tuple[float, float, float]]
    """RGB paper colour: a point drawn on the line from the first colour to the second, then jittered."""
    ink_strength: tuple[float, float]
    """How much of the paper the ink covers at a stroke's core (1: fully opaque)."""
    stroke: str
    """'plain', 'thick' (felt marker), 'thin' (fine pen) or 'grainy' (pencil)."""
    texture: str
    """'smooth', 'fibres' (kraft paper), 'grid' (squared notebook) or 'speckle' (recycled paper)."""
    lighting: str
    """'linear' (window light), 'lamp' (radial fall-off from a point) or 'shadow' (the phone's shadow)."""
    digit_fraction: tuple[float, float]
    """The digit's side as a fraction of the picture's short side."""
    short_side: tuple[int, int]
    """The picture's short side in pixels."""
    aspect: tuple[float, ...]
    """Long side / short side, one picked per photo (phones: 4:3, 16:9, square)."""
    blur: tuple[float, float]
    """Gaussian blur radius in pixels of the final picture (focus, shake)."""
    noise: tuple[float, float]
    """Sensor noise, standard deviation in [0, 1] units."""
    jpeg_quality: tuple[int, int] | None
    """Inclusive JPEG quality range; None: saved as PNG (a screenshot or an edited picture)."""
    orientations: tuple[int, ...]
    """EXIF orientations the phone stores the picture with, one picked per photo (1: upright)."""


def _ink_alpha(digit: np.ndarray, side: int, style: _Style, rng: np.random.Generator) -> Image.Image:
    """The digit enlarged to ``side`` pixels, its strokes shaped by the pen, turned by up to 10 degrees."""
    grey = Image.fromarray(np.clip(np.asarray(digit, np.float32) * 255.0, 0, 255).astype(np.uint8), "L")
    alpha = grey.resize((side, side), Image.Resampling.BICUBIC)
    pen = max(3, (side // 40) | 1)
    if style.stroke == "thick":
        alpha = alpha.filter(ImageFilter.MaxFilter(pen))
    elif style.stroke == "thin":
        alpha = alpha.filter(ImageFilter.MinFilter(pen))
    angle = float(rng.uniform(-10.0, 10.0))
    return alpha.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=0)


def _texture(style: _Style, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A multiplicative brightness pattern of the paper, around 1.0."""
    if style.texture == "fibres":
        streaks = rng.normal(0.0, 1.0, (height // 4 + 1, width // 16 + 1)).astype(np.float32)
        fibres = np.asarray(Image.fromarray(streaks).resize((width, height), Image.Resampling.BICUBIC))
        return 1.0 + 0.02 * fibres
    if style.texture == "speckle":
        pattern = np.ones((height, width), np.float32)
        count = int(height * width * rng.uniform(0.0005, 0.002))
        rows, cols = rng.integers(0, height, count), rng.integers(0, width, count)
        pattern[rows, cols] = rng.uniform(0.75, 0.92, count).astype(np.float32)
        return pattern
    if style.texture == "grid":
        pitch = int(rng.integers(max(12, height // 24), max(13, height // 12)))
        offset_r, offset_c = int(rng.integers(0, pitch)), int(rng.integers(0, pitch))
        lines = np.ones((height, width), np.float32)
        strength = float(rng.uniform(0.05, 0.1))
        lines[offset_r::pitch, :] -= strength
        lines[:, offset_c::pitch] -= strength
        return lines
    return 1.0 + rng.normal(0.0, 0.008, (height, width)).astype(np.float32)


def _lighting(style: _Style, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A multiplicative illumination field, at most 1.0."""
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, np.newaxis]
    cols = np.linspace(0.0, 1.0, width, dtype=np.float32)[np.newaxis, :]
    if style.lighting == "lamp":
        centre_r, centre_c = (float(value) for value in rng.uniform(-0.3, 1.3, 2))
        distance = np.sqrt((rows - centre_r) ** 2 + (cols - centre_c) ** 2)
        return 1.0 - float(rng.uniform(0.15, 0.35)) * np.clip(distance / 1.4, 0.0, 1.0)
    if style.lighting == "shadow":
        angle = float(rng.uniform(0.0, 2.0 * np.pi))
        edge = (
            float(np.cos(angle)) * (cols - 0.5) + float(np.sin(angle)) * (rows - 0.5) - float(rng.uniform(-0.45, -0.2))
        )
        softness = float(rng.uniform(0.01, 0.05))
        shade = 1.0 / (1.0 + np.exp(-np.clip(edge / softness, -30.0, 30.0)))
        return 1.0 - float(rng.uniform(0.2, 0.4)) * shade
    angle = float(rng.uniform(0.0, 2.0 * np.pi))
    ramp = float(np.cos(angle)) * cols + float(np.sin(angle)) * rows
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    return 1.0 - float(rng.uniform(0.0, 0.3)) * ramp


def _compose(digit: np.ndarray, style: _Style, rng: np.random.Generator) -> Image.Image:
    """The upright picture: paper, ink, light, camera.

    Drawn at a short side of at most ``_DRAW_SIDE`` and enlarged to the picture's size at
    the end (as a phone's image processor interpolates and smooths sensor noise), so a
    large photo costs little more than a small one.
    """
    short = int(rng.integers(style.short_side[0], style.short_side[1] + 1))
    long = int(round(short * float(rng.choice(style.aspect))))
    size = (short, long) if rng.random() < 0.7 else (long, short)
    scale = min(1.0, _DRAW_SIDE / short)
    width, height = max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
    alpha_image = _ink_alpha(digit, int(round(min(width, height) * rng.uniform(*style.digit_fraction))), style, rng)
    alpha = np.asarray(alpha_image, np.float32) / 255.0
    if style.stroke == "grainy":
        alpha = alpha * rng.uniform(0.55, 1.0, alpha.shape).astype(np.float32)
    alpha = alpha * np.float32(rng.uniform(*style.ink_strength))
    low, high = np.asarray(style.paper[0], np.float32), np.asarray(style.paper[1], np.float32)
    paper = low + (high - low) * np.float32(rng.random()) + rng.normal(0.0, 0.01, 3).astype(np.float32)
    side_r, side_c = alpha.shape
    top = int(rng.integers(0, max(0, height - side_r) + 1))
    left = int(rng.integers(0, max(0, width - side_c) + 1))
    placed = np.zeros((height, width), np.float32)
    placed[top : top + side_r, left : left + side_c] = alpha[: height - top, : width - left]
    ink = np.asarray(style.inks[int(rng.integers(0, len(style.inks)))], np.float32)
    ink = np.clip(ink + rng.normal(0.0, 0.03, 3).astype(np.float32), 0.0, 1.0)
    light = _texture(style, height, width, rng) * _lighting(style, height, width, rng)
    covered = placed[..., np.newaxis]
    canvas = (paper * (1.0 - covered) + ink * covered) * light[..., np.newaxis]
    noise = rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(rng.uniform(*style.noise))
    canvas += noise
    picture = Image.fromarray(np.clip(canvas * 255.0, 0, 255).astype(np.uint8), "RGB")
    radius = float(rng.uniform(*style.blur)) * scale
    if radius > 0.2:
        picture = picture.filter(ImageFilter.GaussianBlur(radius))
    return picture if picture.size == size else picture.resize(size, Image.Resampling.BICUBIC)


def _encode(picture: Image.Image, style: _Style, rng: np.random.Generator) -> bytes:
    """Store the picture as the phone would: possibly sideways with an EXIF tag, JPEG or PNG."""
    orientation = int(rng.choice(style.orientations))
    exif = Image.Exif()
    if orientation != 1:
        picture = picture.transpose(_STORED_AS[orientation])
        exif[_EXIF_ORIENTATION] = orientation
    buffer = io.BytesIO()
    if style.jpeg_quality is None:
        picture.save(buffer, "PNG", exif=exif, compress_level=3)
    else:
        quality = int(rng.integers(style.jpeg_quality[0], style.jpeg_quality[1] + 1))
        picture.save(buffer, "JPEG", quality=quality, exif=exif)
    return buffer.getvalue()


def _renderer(style: _Style) -> Renderer:
    def render_one(digit: np.ndarray, rng: np.random.Generator) -> bytes:
        return _encode(_compose(digit, style, rng), style, rng)

    return render_one


_STYLES: dict[str, _Style] = {
    "ballpoint_office": _Style(
        inks=((0.08, 0.12, 0.45), (0.05, 0.05, 0.08), (0.1, 0.15, 0.55)),
        paper=((0.86, 0.88, 0.9), (0.97, 0.98, 1.0)),
        ink_strength=(0.8, 0.95),
        stroke="plain",
        texture="smooth",
        lighting="linear",
        digit_fraction=(0.35, 0.7),
        short_side=(360, 720),
        aspect=(4 / 3, 16 / 9),
        blur=(0.0, 1.0),
        noise=(0.005, 0.02),
        jpeg_quality=(75, 92),
        orientations=(1, 1, 6, 8),
    ),
    "marker_kraft": _Style(
        inks=((0.04, 0.04, 0.04), (0.05, 0.2, 0.08)),
        paper=((0.74, 0.6, 0.42), (0.88, 0.76, 0.58)),
        ink_strength=(0.85, 1.0),
        stroke="thick",
        texture="fibres",
        lighting="linear",
        digit_fraction=(0.4, 0.7),
        short_side=(300, 600),
        aspect=(4 / 3, 1.0),
        blur=(0.3, 1.5),
        noise=(0.01, 0.03),
        jpeg_quality=(60, 85),
        orientations=(1, 6, 3),
    ),
    "pencil_lamp": _Style(
        inks=((0.3, 0.3, 0.32), (0.25, 0.25, 0.28)),
        paper=((0.85, 0.8, 0.62), (0.95, 0.9, 0.75)),
        ink_strength=(0.65, 0.85),
        stroke="grainy",
        texture="speckle",
        lighting="lamp",
        digit_fraction=(0.3, 0.6),
        short_side=(480, 900),
        aspect=(4 / 3,),
        blur=(0.5, 1.8),
        noise=(0.015, 0.035),
        jpeg_quality=(55, 80),
        orientations=(1, 6, 8),
    ),
    "notebook_grid": _Style(
        inks=((0.1, 0.2, 0.6), (0.6, 0.05, 0.1), (0.05, 0.05, 0.1)),
        paper=((0.9, 0.92, 0.93), (0.98, 0.99, 1.0)),
        ink_strength=(0.8, 0.95),
        stroke="thin",
        texture="grid",
        lighting="linear",
        digit_fraction=(0.4, 0.7),
        short_side=(400, 800),
        aspect=(4 / 3, 16 / 9),
        blur=(0.0, 1.2),
        noise=(0.005, 0.02),
        jpeg_quality=(70, 90),
        orientations=(1, 1, 6),
    ),
    "red_pen_screenshot": _Style(
        inks=((0.75, 0.08, 0.1), (0.55, 0.05, 0.3)),
        paper=((0.93, 0.93, 0.9), (1.0, 1.0, 0.98)),
        ink_strength=(0.85, 1.0),
        stroke="plain",
        texture="smooth",
        lighting="linear",
        digit_fraction=(0.45, 0.8),
        short_side=(240, 480),
        aspect=(1.0, 4 / 3),
        blur=(0.0, 0.8),
        noise=(0.0, 0.01),
        jpeg_quality=None,
        orientations=(1,),
    ),
    "gel_pen_shadow": _Style(
        inks=((0.02, 0.02, 0.03), (0.05, 0.05, 0.3)),
        paper=((0.88, 0.9, 0.92), (1.0, 1.0, 1.0)),
        ink_strength=(0.9, 1.0),
        stroke="plain",
        texture="speckle",
        lighting="shadow",
        digit_fraction=(0.3, 0.55),
        short_side=(600, 1080),
        aspect=(16 / 9, 4 / 3),
        blur=(0.5, 2.0),
        noise=(0.01, 0.03),
        jpeg_quality=(55, 75),
        orientations=(6, 8, 3, 1),
    ),
}

RENDERERS: dict[str, Renderer] = {name: _renderer(style) for name, style in _STYLES.items()}
TRAINING_RENDERERS: tuple[str, ...] = ("ballpoint_office", "marker_kraft", "pencil_lamp", "notebook_grid")
"""For photo baselines and training augmentation."""
HELD_OUT_RENDERERS: tuple[str, ...] = ("red_pen_screenshot", "gel_pen_shadow")
"""Evaluation only: never used to build a baseline or to train."""


def render(digit: np.ndarray, name: str, rng: np.random.Generator) -> bytes:
    """The photo renderer ``name`` makes of ``digit`` (28 x 28 float in [0, 1], white on black)."""
    try:
        renderer = RENDERERS[name]
    except KeyError:
        raise KeyError(f"unknown renderer {name!r} (known: {', '.join(RENDERERS)})") from None
    return renderer(digit, rng)
