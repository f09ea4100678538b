"""Thresholds calibrated on the null: the false-alarm rate they were calibrated for, on fresh samples."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.monitoring.baseline import compute_baseline
from gateway.monitoring.null_calibration import (
    DEFAULT_TRIALS,
    _distances,
    _one_hot,
    _reference_weights,
    _window_weights,
    bin_indices,
    calibrate,
)
from gateway.monitoring.skew import SkewThresholds, compute_skew, thresholds_for

LABELS = [str(i) for i in range(4)]


def population(rng: np.random.Generator, size: int, shift: float = 0.0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Three correlated features (one discrete) and a label, like digit features."""
    base = rng.normal(shift, 1.0, size)
    features = {
        "a": base,
        "b": base + 0.5 * rng.normal(0.0, 1.0, size),
        "c": np.clip(np.round(base * 2 + 20), 10, 28),
    }
    return features, rng.integers(0, len(LABELS), size)


def records(features: dict[str, np.ndarray], labels: np.ndarray) -> list[dict]:
    return [
        {"features": {name: float(values[i]) for name, values in features.items()}, "label": LABELS[labels[i]]}
        for i in range(len(labels))
    ]


@pytest.fixture(scope="module")
def calibrated_baseline() -> dict:
    features, labels = population(np.random.default_rng(1), 3000)
    baseline = compute_baseline(features, labels, LABELS, "synthetic")
    baseline["thresholds"] = calibrate(
        baseline, features, labels, false_alarm_rate=0.05, windows=(50, 200), trials=1000, seed=2
    )
    return baseline


@pytest.mark.parametrize("window", [50, 200])
def test_fresh_windows_from_the_same_population_alarm_at_about_the_calibrated_rate(calibrated_baseline, window) -> None:
    rng = np.random.default_rng(3)
    trials = 300
    alarms = sum(
        compute_skew(calibrated_baseline, records(*population(rng, window)), SkewThresholds())["alarm"]
        for _ in range(trials)
    )
    assert 0.01 <= alarms / trials <= 0.10  # calibrated for 0.05; 300 windows: +-0.025 is two standard errors


def test_small_windows_get_wider_thresholds(calibrated_baseline) -> None:
    windows = calibrated_baseline["thresholds"]["windows"]
    for name in ("a", "b", "c"):
        assert windows["50"]["features"][name] > windows["200"]["features"][name] > 0
    assert windows["50"]["labels"] > windows["200"]["labels"]


def test_the_correction_is_no_stricter_than_bonferroni(calibrated_baseline) -> None:
    for entry in calibrated_baseline["thresholds"]["windows"].values():
        assert 0.05 / 4 <= entry["per_test_level"] <= 0.05


def test_a_shifted_population_alarms(calibrated_baseline) -> None:
    report = compute_skew(
        calibrated_baseline, records(*population(np.random.default_rng(4), 200, shift=0.4)), SkewThresholds()
    )
    assert report["alarm"] and report["features"]["a"]["alarm"]
    assert report["calibration"]["calibrated_window"] == 200 and report["calibration"]["false_alarm_rate"] == 0.05


def test_a_window_uses_the_largest_calibrated_size_it_reaches_and_none_below_the_smallest(calibrated_baseline) -> None:
    calibrated = calibrated_baseline["thresholds"]
    assert thresholds_for(calibrated, 199)["window"] == 50
    assert thresholds_for(calibrated, 5000)["window"] == 200
    assert thresholds_for(calibrated, 49) is None
    report = compute_skew(
        calibrated_baseline, records(*population(np.random.default_rng(5), 40, shift=3.0)), SkewThresholds()
    )
    assert not report["enough_data"] and not report["alarm"]


def test_mixed_groups_widen_the_thresholds() -> None:
    rng = np.random.default_rng(6)
    first, labels_1 = population(rng, 1500)
    second, labels_2 = population(rng, 1500, shift=0.8)
    features = {name: np.concatenate([first[name], second[name]]) for name in first}
    labels = np.concatenate([labels_1, labels_2])
    baseline = compute_baseline(features, labels, LABELS, "two renderers")
    groups = np.repeat([0, 1], 1500)
    pooled = calibrate(baseline, features, labels, windows=(200,), trials=400, seed=7)
    grouped = calibrate(baseline, features, labels, groups=groups, windows=(200,), trials=400, seed=7)
    assert grouped["windows"]["200"]["features"]["a"] > 1.3 * pooled["windows"]["200"]["features"]["a"]
    assert "Dirichlet" in grouped["method"] and "Dirichlet" not in pooled["method"]


def test_a_false_alarm_rate_outside_zero_to_one_is_refused(calibrated_baseline) -> None:
    features, labels = population(np.random.default_rng(8), 100)
    with pytest.raises(ValueError, match="false_alarm_rate"):
        calibrate(calibrated_baseline, features, labels, false_alarm_rate=1.5)


def test_a_reference_made_of_copies_is_drawn_by_source_and_gets_wider_thresholds() -> None:
    """Three uploads of each of 300 photos hold 300 draws from the population, not 900."""
    features, labels = population(np.random.default_rng(9), 300)
    copies = {name: np.repeat(values, 3) + np.tile([0.0, 0.01, -0.01], 300) for name, values in features.items()}
    tripled = np.repeat(labels, 3)
    baseline = compute_baseline(copies, tripled, LABELS, "three uploads each")
    by_item = calibrate(baseline, copies, tripled, windows=(200,), trials=400, seed=10)
    by_source = calibrate(
        baseline, copies, tripled, clusters=np.repeat(np.arange(300), 3), windows=(200,), trials=400, seed=10
    )
    assert by_source["windows"]["200"]["features"]["a"] > 1.2 * by_item["windows"]["200"]["features"]["a"]
    assert "by source (300 sources)" in by_source["method"]


def test_copies_in_the_reference_cost_no_false_alarms_once_drawn_by_source() -> None:
    """Fresh windows against a reference of three uploads per photo alarm as often as against the photos
    themselves when the pseudo-references are drawn by source; drawn by item, several times as often."""
    rng = np.random.default_rng(11)
    features, labels = population(rng, 400)
    copies = {name: np.repeat(values, 3) for name, values in features.items()}

    def rate(values: dict, truth: np.ndarray, clusters: np.ndarray | None) -> float:
        baseline = compute_baseline(values, truth, LABELS, "reference")
        baseline["thresholds"] = calibrate(
            baseline, values, truth, clusters=clusters, false_alarm_rate=0.05, windows=(200,), trials=1000, seed=12
        )
        fresh = np.random.default_rng(13)
        return np.mean(
            [compute_skew(baseline, records(*population(fresh, 200)), SkewThresholds())["alarm"] for _ in range(300)]
        )

    photos = rate(features, labels, None)
    by_source = rate(copies, np.repeat(labels, 3), np.repeat(np.arange(400), 3))
    by_item = rate(copies, np.repeat(labels, 3), None)
    assert by_source <= photos + 0.04
    assert by_item >= 2 * by_source


def _fresh_null_rate(trials: int) -> float:
    """Share of fresh draws of the calibration's own null (new pseudo-references and windows, other seed)
    that cross the thresholds calibrated at 1% on ``trials`` draws, for eight features and the labels."""
    rng = np.random.default_rng(14)
    base = rng.normal(0.0, 1.0, 3000)
    features = {f"f{k}": base + k * 0.3 * rng.normal(0.0, 1.0, 3000) for k in range(7)}
    features["discrete"] = np.clip(np.round(base * 2 + 20), 10, 28)
    labels = rng.integers(0, len(LABELS), 3000)
    baseline = compute_baseline(features, labels, LABELS, "synthetic")
    entry = calibrate(baseline, features, labels, windows=(200,), trials=trials, seed=15)["windows"]["200"]
    bins = {name: bin_indices(baseline["features"][name]["edges"], values) for name, values in features.items()}
    sizes = {name: len(baseline["features"][name]["counts"]) for name in features}
    bins["labels"], sizes["labels"] = labels, len(LABELS)
    one_hot, columns = _one_hot(bins, sizes)
    limits = np.array([entry["features"].get(name, entry["labels"]) for name in bins])
    groups, fresh, alarms = np.zeros(3000, np.int64), np.random.default_rng(16), 0
    for _ in range(80):
        expected = _reference_weights(groups, None, 250, fresh) @ one_hot
        actual = _window_weights(200, 250, groups, fresh) @ one_hot
        alarms += int((_distances(list(bins), columns, expected, actual) > limits).any(axis=1).sum())
    return alarms / 20_000


def test_the_thresholds_hold_their_rate_on_draws_they_were_not_fitted_on() -> None:
    """The level and the thresholds are chosen on the same draws; with a few draws past each threshold
    (2,000 draws: about 3 at the per-test level) fresh draws of the same null cross them far more often."""
    assert 0.007 <= _fresh_null_rate(DEFAULT_TRIALS) <= 0.0135  # 20,000 fresh draws: +-0.0014 is two errors
