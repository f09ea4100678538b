"""The skew benchmark's own measurements, on the committed held-out sample."""

import numpy as np
from PIL import Image

from gateway.bench.skew import DIGIT_SHIFTS, PHOTO_SHIFTS, false_alarm_rate, requests_until_flagged
from gateway.monitoring.baseline import read_baseline
from gateway.monitoring.features import digit_features
from gateway.monitoring.skew import SkewThresholds
from tests.conftest import MODEL_REPO

BASELINE = read_baseline(MODEL_REPO / "mnist" / "1" / "baseline.json")


def records(digits: np.ndarray, labels: np.ndarray) -> list[dict]:
    features = digit_features((digits / 255.0).astype(np.float32)[:, np.newaxis])
    return [
        {"features": {name: float(values[i]) for name, values in features.items()}, "label": str(labels[i])}
        for i in range(len(digits))
    ]


def test_shifted_traffic_is_flagged_and_clean_traffic_is_not(heldout_sample) -> None:
    x, y = heldout_sample
    clean = records(x, y)
    inverted = records(np.stack([DIGIT_SHIFTS["inverted colours"](d) for d in x]), y)
    assert requests_until_flagged(BASELINE, clean, inverted, 300, SkewThresholds(), step=10) <= 60
    assert requests_until_flagged(BASELINE, clean, clean, 300, SkewThresholds(), step=50) is None


def test_in_distribution_windows_rarely_alarm(heldout_sample) -> None:
    x, y = heldout_sample
    rate = false_alarm_rate(BASELINE, records(x, y), 100, 100, SkewThresholds(), np.random.default_rng(0))
    assert rate <= 0.05


def test_the_photo_shifts_change_what_they_say() -> None:
    grey = Image.new("RGB", (8, 8), (100, 120, 140))
    cast = np.asarray(PHOTO_SHIFTS["colour cast (warm white balance)"](grey))[0, 0]
    assert cast[0] > 100 and cast[1] == 120 and cast[2] < 140
    bw = np.asarray(PHOTO_SHIFTS["black-and-white photos"](grey))[0, 0]
    assert bw[0] == bw[1] == bw[2]
