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
