"""The skew monitor's arithmetic, and its verdicts on held-out digits and on shifted ones."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.config import load_settings
from gateway.monitoring.baseline import read_baseline
from gateway.monitoring.features import digit_features
from gateway.monitoring.skew import SkewThresholds, compute_skew, label_linf, live_histogram, psi
from tests.conftest import MODEL_REPO

BASELINE = read_baseline(MODEL_REPO / "mnist" / "1" / "baseline.json")


def records(tensors: np.ndarray, labels: np.ndarray) -> list[dict]:
    features = digit_features(tensors)
    return [
        {"features": {name: float(values[i]) for name, values in features.items()}, "label": str(labels[i])}
        for i in range(len(tensors))
    ]


def test_psi_is_zero_for_the_same_distribution_and_grows_with_shift() -> None:
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    assert psi([10, 20, 30], [30, 20, 10]) > psi([10, 20, 30], [15, 20, 25]) > 0


def test_out_of_range_values_fall_in_the_edge_bins() -> None:
    assert live_histogram([0.0, 1.0, 2.0], np.array([-5.0, 0.5, 1.5, 9.0])).tolist() == [2, 2]


def test_label_distance_is_the_largest_share_moved() -> None:
    assert label_linf({"0": 0.5, "1": 0.5}, ["0", "0", "0", "1"]) == pytest.approx(0.25)


def test_held_out_digits_raise_no_alarm(heldout_sample) -> None:
    x, y = heldout_sample
    report = compute_skew(BASELINE, records((x / 255.0).astype(np.float32), y), SkewThresholds())
    assert report["enough_data"] and not report["alarm"]
    assert all(result["distance"] < result["threshold"] for result in report["features"].values())


@pytest.mark.parametrize(
    ("shift", "alarming"),
    [
        (lambda t: 1.0 - t, {"mean_intensity", "ink_fraction"}),
        (lambda t: t * 0.6, {"mean_intensity", "contrast"}),
    ],
    ids=["inverted-colours", "faint-ink"],
)
def test_shifted_digits_raise_the_alarm_on_the_features_that_moved(heldout_sample, shift, alarming) -> None:
    x, y = heldout_sample
    report = compute_skew(BASELINE, records(shift((x / 255.0).astype(np.float32)), y), SkewThresholds())
    assert report["alarm"]
    assert alarming <= {name for name, result in report["features"].items() if result["alarm"]}


def test_small_windows_get_wider_thresholds_and_still_a_verdict(heldout_sample) -> None:
    x, y = heldout_sample
    inverted = records(1.0 - (x / 255.0).astype(np.float32), y)
    small, large = (compute_skew(BASELINE, inverted[:n], SkewThresholds()) for n in (50, 300))
    assert small["enough_data"] and small["alarm"] and small["calibration"]["calibrated_window"] == 50
    for name, result in small["features"].items():
        assert result["threshold"] > large["features"][name]["threshold"]
    assert small["calibration"]["false_alarm_rate"] == 0.01


def test_below_the_smallest_calibrated_window_there_is_no_verdict(heldout_sample) -> None:
    x, y = heldout_sample
    report = compute_skew(BASELINE, records(1.0 - (x[:49] / 255.0).astype(np.float32), y[:49]), SkewThresholds())
    assert not report["enough_data"] and not report["alarm"]


def test_a_baseline_without_calibration_falls_back_to_the_fixed_thresholds(heldout_sample) -> None:
    x, y = heldout_sample
    uncalibrated = {key: value for key, value in BASELINE.items() if key != "thresholds"}
    report = compute_skew(uncalibrated, records((x / 255.0).astype(np.float32), y), SkewThresholds())
    assert report["calibration"] is None
    assert {r["threshold"] for r in report["features"].values()} == {SkewThresholds().psi}


def test_a_per_feature_threshold_from_the_settings_replaces_the_default(heldout_sample) -> None:
    x, y = heldout_sample
    faint = records((x / 255.0).astype(np.float32) * 0.6, y)
    settings = load_settings(environ={"GATEWAY_TLS_ENABLED": "false", "GATEWAY_SKEW_FEATURE_THRESHOLDS": "contrast=50"})
    tuned = SkewThresholds(per_feature=settings.skew.per_feature)
    default = compute_skew(BASELINE, faint, SkewThresholds())["features"]["contrast"]
    report = compute_skew(BASELINE, faint, tuned)["features"]["contrast"]
    assert default["alarm"] and not report["alarm"]
    assert report["threshold"] == 50.0 and report["distance"] == default["distance"]


def test_the_upload_size_is_shown_but_raises_no_alarm_unless_the_operator_sets_a_threshold() -> None:
    edges = [0.0, 1.0, 2.0, 3.0]
    baseline = {
        "features": {"megapixels": {"edges": edges, "counts": [10, 10, 10], "mean": 1.5}},
        "labels": {"hotdog": 1.0},
    }
    smaller = [{"features": {"megapixels": 0.5}, "label": "hotdog"}] * 60  # a new client: every upload smaller
    report = compute_skew(baseline, smaller, SkewThresholds())
    megapixels = report["features"]["megapixels"]
    assert megapixels["distance"] > megapixels["threshold"] and megapixels["informational"]
    assert not megapixels["alarm"] and not report["alarm"]
    opted_in = compute_skew(baseline, smaller, SkewThresholds(per_feature={"megapixels": 0.5}))
    assert opted_in["alarm"] and not opted_in["features"]["megapixels"]["informational"]
