"""The accuracy estimate says when it cannot be trusted: no verdict yet, or inputs that moved."""

from __future__ import annotations

import numpy as np

from gateway.bench.skew import DIGIT_SHIFTS
from gateway.monitoring.baseline import read_baseline
from gateway.monitoring.features import digit_features
from gateway.monitoring.reference import OnnxModel
from gateway.monitoring.skew import SkewThresholds
from gateway.monitoring.skew_surfaces import surface_report
from gateway.monitoring.temperature import read_temperatures
from tests.conftest import MODEL_REPO

VERSION_DIR = MODEL_REPO / "mnist" / "2"


def records(digits: np.ndarray) -> list[dict]:
    tensors = (digits / 255.0).astype(np.float32)[:, np.newaxis]
    features = digit_features(tensors)
    probabilities = OnnxModel(VERSION_DIR / "model.onnx").probabilities(tensors)
    return [
        {
            "features": {name: float(values[i]) for name, values in features.items()},
            "label": str(int(probabilities[i].argmax())),
            "probabilities": probabilities[i].tolist(),
        }
        for i in range(len(digits))
    ]


def report(digits: np.ndarray, window: int) -> dict:
    baseline = read_baseline(VERSION_DIR / "baseline.json")
    temperature = read_temperatures(VERSION_DIR / "calibration.json")["tensor"]
    return surface_report(baseline, records(digits), window, SkewThresholds(), temperature)


def test_the_estimate_is_trusted_on_held_out_digits(heldout_sample) -> None:
    x, _ = heldout_sample
    result = report(x, len(x))
    assert not result["alarm"] and result["estimate_trusted"]
    assert result["estimated_accuracy"] > 0.95


def test_blurred_digits_are_confidently_wrong_and_the_estimate_says_it_cannot_be_trusted(heldout_sample) -> None:
    x, y = heldout_sample
    blurred = np.stack([DIGIT_SHIFTS["heavy blur (radius 2)"](d) for d in x])
    result = report(blurred, len(x))
    accuracy = np.mean([int(np.argmax(r["probabilities"])) == t for r, t in zip(records(blurred), y, strict=True)])
    assert result["estimated_accuracy"] - accuracy > 0.3  # what the estimate alone would claim
    assert result["alarm"] and not result["estimate_trusted"]
    assert "feedback" in result["estimate_note"]


def test_too_few_records_give_no_trusted_estimate(heldout_sample) -> None:
    x, _ = heldout_sample
    result = report(x[:20], 20)
    assert not result["enough_data"] and not result["estimate_trusted"]
