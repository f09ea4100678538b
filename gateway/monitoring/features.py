"""Summary features of a preprocessed model input: what the skew monitor compares.

The same functions describe the training data (the baseline recorded beside each model
version) and live traffic, so the two can be compared bin for bin.
"""

from __future__ import annotations

import numpy as np

INK_LEVEL = 0.5
"""A pixel at or above this intensity counts as ink (inputs are white ink on black, in [0, 1])."""

DIGIT_FEATURES = (
    "mean_intensity",
    "ink_fraction",
    "contrast",
    "bbox_width",
    "bbox_height",
    "stroke_width",
    "slant",
    "grey_share",
)
FAINT_LEVEL = 0.05
"""A pixel above this intensity is part of the digit (for ``grey_share``)."""


def digit_features(batch: np.ndarray) -> dict[str, np.ndarray]:
    """Features of each item in a batch of MNIST-style inputs ([N, 1, 28, 28] or [N, 28, 28]).

    Besides intensity and extent, three that the photo pipeline does not normalise away
    (it crops to the ink, fits it into 20 x 20 and sets the stroke intensity):
    ``stroke_width`` (2 x ink area / ink boundary, in pixels: a thick pen),
    ``slant`` (the second-moment shear, columns per row: a rotated or slanted digit) and
    ``grey_share`` (the share of the digit's pixels that are grey, not ink: faint ink and
    blur leave soft edges).
    """
    images = batch.reshape(len(batch), batch.shape[-2], batch.shape[-1]).astype(np.float32)
    ink = images >= INK_LEVEL
    rows, cols = ink.any(axis=2), ink.any(axis=1)

    def extent(mask: np.ndarray) -> np.ndarray:
        first = mask.argmax(axis=1)
        last = mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)
        return np.where(mask.any(axis=1), last - first + 1, 0).astype(np.float32)

    return {
        "mean_intensity": images.mean(axis=(1, 2)),
        "ink_fraction": ink.mean(axis=(1, 2)),
        "contrast": images.std(axis=(1, 2)),
        "bbox_width": extent(cols),
        "bbox_height": extent(rows),
        "stroke_width": _stroke_width(ink),
        "slant": _slant(images),
        "grey_share": _grey_share(images),
    }


def _stroke_width(ink: np.ndarray) -> np.ndarray:
    """2 x area / boundary pixels of the ink mask: a stroke w wide and L long has area wL and ~2L boundary."""
    area = ink.sum(axis=(1, 2)).astype(np.float32)
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    inner = (
        padded[:, 1:-1, 1:-1] & padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    )
    boundary = area - inner.sum(axis=(1, 2)).astype(np.float32)
    return np.divide(2.0 * area, boundary, out=np.zeros_like(area), where=boundary > 0)


def _slant(images: np.ndarray) -> np.ndarray:
    """Intensity-weighted covariance of column and row over the variance of the row (0 for an empty input)."""
    total = images.sum(axis=(1, 2))
    weight = np.maximum(total, 1e-6)
    rows, cols = np.indices(images.shape[1:], dtype=np.float32)
    mean_r = (images * rows).sum(axis=(1, 2)) / weight
    mean_c = (images * cols).sum(axis=(1, 2)) / weight
    dr = rows[np.newaxis] - mean_r[:, np.newaxis, np.newaxis]
    dc = cols[np.newaxis] - mean_c[:, np.newaxis, np.newaxis]
    var_r = (images * dr * dr).sum(axis=(1, 2)) / weight
    cov = (images * dr * dc).sum(axis=(1, 2)) / weight
    return np.divide(cov, var_r, out=np.zeros_like(cov), where=var_r > 1e-6)


def _grey_share(images: np.ndarray) -> np.ndarray:
    """Share of the digit's pixels (above FAINT_LEVEL) below the ink level."""
    in_digit = images > FAINT_LEVEL
    digit = in_digit.sum(axis=(1, 2)).astype(np.float32)
    grey = (in_digit & (images < INK_LEVEL)).sum(axis=(1, 2)).astype(np.float32)
    return np.divide(grey, digit, out=np.zeros_like(digit), where=digit > 0)


PHOTO_FEATURES = ("red_mean", "green_mean", "blue_mean", "brightness", "contrast", "saturation")
SOURCE_FEATURES = ("megapixels", "aspect_ratio")
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
"""ITU-R BT.601 weights: brightness as a person perceives it, from RGB."""


def photo_features(batch: np.ndarray) -> dict[str, np.ndarray]:
    """Features of each item in a batch of colour inputs ([N, 3, H, W], RGB in [0, 1])."""
    pixels = batch.reshape(len(batch), 3, -1).astype(np.float32, copy=False)
    luma = np.einsum("c,ncp->np", LUMA, pixels)
    brightest = pixels.max(axis=1)
    saturation = np.subtract(brightest, pixels.min(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):  # a masked divide (where=) costs ten times more
        np.divide(saturation, brightest, out=saturation)
    saturation[~(brightest > 0)] = 0.0
    means = pixels.mean(axis=2)
    return {
        "red_mean": means[:, 0],
        "green_mean": means[:, 1],
        "blue_mean": means[:, 2],
        "brightness": luma.mean(axis=1),
        "contrast": luma.std(axis=1),
        "saturation": saturation.mean(axis=1),
    }


def source_features(sizes: np.ndarray) -> dict[str, np.ndarray]:
    """Features of the uploaded photos' sizes ([N, 2] width, height, upright): what the camera sent."""
    sizes = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    return {"megapixels": sizes[:, 0] * sizes[:, 1] / 1e6, "aspect_ratio": sizes[:, 0] / sizes[:, 1]}
