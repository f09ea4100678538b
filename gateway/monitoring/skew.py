"""Training/serving skew: live feature and label distributions against the training baseline.

Numeric features: population stability index (PSI) of the live window's histogram on the
baseline's bins (values outside the baseline's range count in the first/last bin).
Labels: L-infinity distance between the live predicted-label distribution and the
baseline's. Each distance has a threshold; crossing it raises an alarm. Thresholds come
from the baseline's calibration on the null (``null_calibration``) for the window's size;
a baseline without one falls back to the fixed thresholds of the settings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gateway.monitoring.features import SOURCE_FEATURES

PSI_EPSILON = 1e-4
"""Floor for empty bins, so PSI stays finite (a common choice)."""
INFORMATIONAL = frozenset(SOURCE_FEATURES)
"""Shown with distance and threshold, but no alarm unless ``skew.feature_thresholds`` sets one: the upload's
size says which camera or client sent it, not what reached the model (every new phone would alarm)."""


@dataclass(frozen=True)
class SkewThresholds:
    psi: float = 0.25
    """PSI above 0.25 is the usual "significant shift"."""
    labels_linf: float = 0.15
    """A predicted label whose share moved by more than 15 points."""
    min_window: int = 50
    """Fewer live records than this: no verdict, no alarm (nor below the smallest calibrated window)."""
    per_feature: dict[str, float] = field(default_factory=dict)
    """Operator overrides of single features' thresholds (they win over calibrated ones)."""


def live_histogram(edges: Sequence[float], values: np.ndarray) -> np.ndarray:
    edges = np.asarray(edges, dtype=np.float64)
    clipped = np.clip(values, edges[0], edges[-1])
    counts, _ = np.histogram(clipped, bins=edges)
    return counts


def psi(expected_counts: Sequence[float], actual_counts: Sequence[float]) -> float:
    expected = np.asarray(expected_counts, dtype=np.float64)
    actual = np.asarray(actual_counts, dtype=np.float64)
    e = np.maximum(expected / max(expected.sum(), 1.0), PSI_EPSILON)
    a = np.maximum(actual / max(actual.sum(), 1.0), PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def label_linf(baseline: dict[str, float], live_labels: Sequence[str]) -> float:
    counts = Counter(live_labels)
    total = max(len(live_labels), 1)
    return max(abs(counts.get(label, 0) / total - share) for label, share in baseline.items())


def thresholds_for(calibrated: dict, window: int) -> dict | None:
    """The thresholds calibrated for the largest window size not above ``window`` (wider: conservative).

    None below the smallest calibrated size: no verdict there.
    """
    sizes = sorted(int(size) for size in calibrated["windows"])
    fitting = [size for size in sizes if size <= window]
    if not fitting:
        return None
    return {"window": fitting[-1], **calibrated["windows"][str(fitting[-1])]}


def _chosen_thresholds(baseline: dict, window: int, thresholds: SkewThresholds) -> tuple[dict | None, dict]:
    """(calibration used or None, {test: threshold}) for a window of ``window`` records."""
    calibrated = baseline.get("thresholds")
    if calibrated is None:
        fixed = {name: thresholds.psi for name in baseline["features"]} | {"labels": thresholds.labels_linf}
        return None, fixed
    chosen = thresholds_for(calibrated, window)
    if chosen is None:  # below the smallest calibrated window: the widest thresholds, and no verdict
        smallest = min(calibrated["windows"], key=int)
        chosen = {"window": int(smallest), **calibrated["windows"][smallest]}
    info = {
        "false_alarm_rate": calibrated["false_alarm_rate"],
        "calibrated_window": chosen["window"],
        "per_test_level": chosen["per_test_level"],
        "method": calibrated["method"],
    }
    return info, chosen["features"] | {"labels": chosen["labels"]}


def compute_skew(baseline: dict, records: Sequence[dict], thresholds: SkewThresholds) -> dict:
    """The skew of ``records`` (logged predictions of one model version and surface) against ``baseline``."""
    window = len(records)
    calibration, limits = _chosen_thresholds(baseline, window, thresholds)
    smallest = min(int(size) for size in baseline["thresholds"]["windows"]) if calibration else 0
    enough = window >= max(thresholds.min_window, smallest)
    features = {}
    for name, histogram in baseline["features"].items():
        values = np.array([r["features"][name] for r in records if name in r.get("features", {})], dtype=np.float64)
        live = live_histogram(histogram["edges"], values) if len(values) else np.zeros(len(histogram["counts"]))
        distance = psi(histogram["counts"], live) if len(values) else None
        threshold = thresholds.per_feature.get(name, limits[name])
        informational = name in INFORMATIONAL and name not in thresholds.per_feature
        features[name] = {
            "distance": None if distance is None else round(distance, 4),
            "threshold": round(threshold, 4),
            "alarm": bool(enough and not informational and distance is not None and distance > threshold),
            "informational": informational,
            "edges": histogram["edges"],
            "baseline_counts": histogram["counts"],
            "live_counts": live.astype(int).tolist(),
            "live_mean": round(float(values.mean()), 6) if len(values) else None,
            "baseline_mean": histogram["mean"],
        }
    labels_distance = label_linf(baseline["labels"], [r["label"] for r in records]) if records else None
    labels = {
        "distance": None if labels_distance is None else round(labels_distance, 4),
        "threshold": round(limits["labels"], 4),
        "alarm": bool(enough and labels_distance is not None and labels_distance > limits["labels"]),
    }
    return {
        "window": window,
        "enough_data": enough,
        "alarm": any(f["alarm"] for f in features.values()) or labels["alarm"],
        "calibration": calibration,
        "features": features,
        "labels": labels,
    }
