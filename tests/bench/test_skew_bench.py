"""The skew benchmark's own measurements, on the committed held-out sample."""

import numpy as np

from gateway.bench.skew import SHIFTS, records_of, requests_until_flagged
from gateway.monitoring.baseline import read_baseline
from gateway.monitoring.skew import SkewThresholds
from tests.conftest import MODEL_REPO


def test_shifted_traffic_is_flagged_and_clean_traffic_is_not(heldout_sample) -> None:
    x, y = heldout_sample
    baseline = read_baseline(MODEL_REPO / "mnist" / "1" / "baseline.json")
    thresholds = SkewThresholds(min_window=300)
    clean = records_of((x / 255.0).astype(np.float32)[:, np.newaxis], y)
    rng = np.random.default_rng(0)
    inverted = records_of((SHIFTS["inverted colours"](x, rng) / 255.0).astype(np.float32)[:, np.newaxis], y)
    assert requests_until_flagged(baseline, clean, inverted, 300, thresholds, step=10) <= 60
    assert requests_until_flagged(baseline, clean, clean, 300, thresholds, step=50) is None
