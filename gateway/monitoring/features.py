"""Summary features of a preprocessed model input: what the skew monitor compares.

The same functions describe the training data (the baseline recorded beside each model
version) and live traffic, so the two can be compared bin for bin.
"""

from __future__ import annotations

import numpy as np

INK_LEVEL = 0.5
"""A pixel at or above this intensity counts as ink (inputs are white ink on black, in [0, 1])."""

DIGIT_FEATURES = ("mean_intensity", "ink_fraction", "contrast", "bbox_width", "bbox_height")


def digit_features(batch: np.ndarray) -> dict[str, np.ndarray]:
    """Features of each item in a batch of MNIST-style inputs ([N, 1, 28, 28] or [N, 28, 28])."""
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
    }


PHOTO_FEATURES = ("red_mean", "green_mean", "blue_mean", "brightness", "contrast", "saturation")
SOURCE_FEATURES = ("megapixels", "aspect_ratio")
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
"""ITU-R BT.601 weights: brightness as a person perceives it, from RGB."""


def photo_features(batch: np.ndarray) -> dict[str, np.ndarray]:
    """Features of each item in a batch of colour inputs ([N, 3, H, W], RGB in [0, 1])."""
    pixels = batch.reshape(len(batch), 3, -1).astype(np.float32, copy=False)
    luma = np.einsum("c,ncp->np", LUMA, pixels)
    brightest, darkest = pixels.max(axis=1), pixels.min(axis=1)
    saturation = np.divide(brightest - darkest, brightest, out=np.zeros_like(brightest), where=brightest > 0)
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
