"""Accuracy without labels: the mean calibrated confidence of the model's answers.

Temperature scaling (Guo et al., 2017): one number T divides the logits, fitted on a
held-out split by minimising the negative log-likelihood of the true labels. The
probabilities the gateway logs are softmax outputs, so the logits are their logarithms up
to a constant, and ``p ** (1 / T)`` renormalised is the calibrated distribution. With
calibrated confidences, the expected accuracy of a set of answers is the mean of their
top probabilities (the idea behind NannyML's confidence-based performance estimation).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TINY = 1e-12


def scaled(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax outputs [N, classes] re-tempered: softmax(log p / T)."""
    logits = np.log(np.maximum(np.asarray(probabilities, np.float64), TINY)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def negative_log_likelihood(probabilities: np.ndarray, truth: np.ndarray, temperature: float) -> float:
    calibrated = scaled(probabilities, temperature)
    return float(-np.log(np.maximum(calibrated[np.arange(len(truth)), truth], TINY)).mean())


def fit_temperature(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """The T in [0.05, 20] minimising the NLL of ``truth`` (golden-section search on log T)."""
    low, high = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    for _ in range(80):
        if negative_log_likelihood(probabilities, truth, np.exp(a)) < negative_log_likelihood(
            probabilities, truth, np.exp(b)
        ):
            high, b = b, a
            a = high - ratio * (high - low)
        else:
            low, a = a, b
            b = low + ratio * (high - low)
    return float(np.exp((low + high) / 2.0))


def estimated_accuracy(probabilities: np.ndarray, temperature: float) -> float:
    """Expected share of right answers: the mean calibrated top probability."""
    return float(scaled(probabilities, temperature).max(axis=1).mean())


def write_calibration(path: Path, calibration: dict) -> None:
    path.write_text(json.dumps(calibration, indent=1) + "\n")


def read_temperatures(path: Path) -> dict[str, float]:
    """The version's fitted temperature per surface; empty when it has no calibration file."""
    if not path.is_file():
        return {}
    surfaces = json.loads(path.read_text())["surfaces"]
    return {surface: float(entry["temperature"]) for surface, entry in surfaces.items()}
