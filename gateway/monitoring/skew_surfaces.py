"""The skew report of one model version: per input surface, against that surface's baseline.

Live records say which surface they came in on (``input``: "photo" or "tensor"); each
surface is compared with its own baseline (``baseline.py``) at the thresholds calibrated
for the window's size, and gets an accuracy estimated from the model's calibrated
confidence (``temperature.py``) beside the live accuracy measured from feedback. The
history (distance against threshold over time) is computed from the log itself, over
windows ending at successive points of it, so every replica draws the same curve.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gateway.core.errors import InvalidInput, NotFound
from gateway.monitoring.baseline import SURFACES, baseline_path, read_baseline
from gateway.monitoring.skew import SkewThresholds, compute_skew
from gateway.monitoring.temperature import estimated_accuracy, read_temperatures

HISTORY_POINTS = 8
"""Points of the history curve; they lie HISTORY_STEP of a window apart."""
HISTORY_STEP = 0.25


def _estimate(records: Sequence[dict], temperature: float | None) -> float | None:
    rows = [r["probabilities"] for r in records if r.get("probabilities")]
    if temperature is None or not rows:
        return None
    return round(estimated_accuracy(np.asarray(rows, np.float64), temperature), 4)


def _history(baseline: dict, records: list[dict], window: int, thresholds: SkewThresholds, temperature) -> list[dict]:
    """Oldest first: for windows ending HISTORY_STEP windows apart, each test's distance and threshold."""
    step = max(1, int(window * HISTORY_STEP))
    points = []
    for k in range(HISTORY_POINTS):
        end = len(records) - k * step
        live = records[max(0, end - window) : end]
        if end <= 0 or not live:
            break
        result = compute_skew(baseline, live, thresholds)
        tests = {
            name: {"distance": r["distance"], "threshold": r["threshold"]} for name, r in result["features"].items()
        }
        tests["labels"] = {"distance": result["labels"]["distance"], "threshold": result["labels"]["threshold"]}
        points.append(
            {
                "time": live[-1].get("time"),
                "window": len(live),
                "alarm": result["alarm"],
                "tests": tests,
                "estimated_accuracy": _estimate(live, temperature),
            }
        )
    return points[::-1]


def estimate_trust(skew: dict, estimate: float | None) -> tuple[bool, str]:
    """Whether the estimate can be read as the accuracy, and why (not).

    The estimate assumes the model's confidence is as calibrated on the live inputs as on
    the held-out split the temperature was fitted on. Inputs that moved away from what the
    model saw when it was built break that (blurred digits: 10% right at 99.9% confidence),
    and the skew alarm is what says they moved; the estimate is then an upper guess at best.
    """
    if estimate is None:
        return False, "no estimate: the version has no fitted temperature, or the window holds no probabilities"
    if not skew["enough_data"]:
        return False, "too few records for a verdict on whether the inputs moved"
    if skew["alarm"]:
        return False, (
            "the inputs moved away from the baseline (skew alarm): the model's confidence need not be calibrated "
            "on them, read accuracy from feedback"
        )
    return True, "inputs like the held-out split the temperature was fitted on"


def surface_report(
    baseline: dict, records: list[dict], window: int, thresholds: SkewThresholds, temperature: float | None
) -> dict:
    """Skew of one surface's newest ``window`` records (``records`` may reach further back, for the history)."""
    live = records[-window:]
    skew = compute_skew(baseline, live, thresholds)
    estimate = _estimate(live, temperature)
    trusted, why = estimate_trust(skew, estimate)
    return {
        **skew,
        "baseline_source": baseline.get("source"),
        "estimated_accuracy": estimate,
        "estimate_trusted": trusted,
        "estimate_note": why,
        "temperature": temperature,
        "history": _history(baseline, records, window, thresholds, temperature),
    }


def history_span(window: int) -> int:
    """How many newest records of a surface the history needs."""
    return window + (HISTORY_POINTS - 1) * max(1, int(window * HISTORY_STEP))


def chosen_surfaces(surface: str | None) -> tuple[str, ...]:
    if surface is None:
        return SURFACES
    if surface not in SURFACES:
        raise InvalidInput(f"surface must be one of {', '.join(SURFACES)}, got {surface!r}")
    return (surface,)


def version_baselines(model: str, version: str, version_dir: Path, surfaces: Sequence[str]) -> dict[str, dict]:
    """The baselines of ``surfaces`` that this version has; NotFound when it has none of them."""
    found = {
        s: read_baseline(baseline_path(version_dir, s)) for s in surfaces if baseline_path(version_dir, s).is_file()
    }
    if not found:
        names = ", ".join(str(baseline_path(version_dir, s)) for s in surfaces)
        raise NotFound(f"model {model!r} version {version} has no baseline for this surface ({names})")
    return found


def version_report(
    model: str,
    version: str,
    version_dir: Path,
    records: dict[str, list[dict]],
    baselines: dict[str, dict],
    window: int,
    thresholds: SkewThresholds,
    live_accuracy: dict | None,
) -> dict:
    """The whole report: per surface with a baseline, and whether any of them alarms."""
    temperatures = read_temperatures(version_dir / "calibration.json")
    surfaces = {
        name: surface_report(baseline, records.get(name, []), window, thresholds, temperatures.get(name))
        for name, baseline in baselines.items()
    }
    everything = [r for name in surfaces for r in records.get(name, [])[-window:]]
    combined = [
        (len(records.get(name, [])[-window:]), s["estimated_accuracy"])
        for name, s in surfaces.items()
        if s["estimated_accuracy"] is not None
    ]
    total = sum(n for n, _ in combined)
    return {
        "model": model,
        "version": version,
        "alarm": any(s["alarm"] for s in surfaces.values()),
        "window": len(everything),
        "estimated_accuracy": round(sum(n * e for n, e in combined) / total, 4) if total else None,
        "live_accuracy": live_accuracy,
        "surfaces": surfaces,
    }
