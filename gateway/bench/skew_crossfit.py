"""The false-alarm rate of the whole calibration procedure, cross-fitted: many baselines, fresh windows.

A false-alarm figure from windows drawn out of one pool of held-out items measures that
pool's luck: every window shares the pool's own deviation from the population, so 200
windows from 1,000 digits are worth a handful of independent ones (the first half of the
MNIST held-out split alone gives 21%, all 2,000 digits 1.8%, for thresholds calibrated
at 1%). Here, each replication draws a fresh reference of the baseline's size at random
from every digit there is, builds a baseline and calibrates its thresholds on it exactly
as ``build_monitoring.py`` does, and checks disjoint windows of the digits left out: the
windows of different replications share nothing, so the rate has the spread of a
binomial over replications (windows of one replication share only their baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gateway.monitoring.baseline import compute_baseline
from gateway.monitoring.null_calibration import calibrate
from gateway.monitoring.skew import SkewThresholds, compute_skew


@dataclass
class CrossFit:
    alarms: int
    windows: int
    replications: int

    @property
    def rate(self) -> float:
        return self.alarms / self.windows

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """Wilson score interval of the rate (95% by default)."""
        n, p = self.windows, self.rate
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)


def crossfit_false_alarms(
    features: dict[str, np.ndarray],
    predicted: np.ndarray,
    label_names: list[str],
    *,
    reference_size: int,
    window: int,
    replications: int,
    trials: int,
    false_alarm_rate: float,
    thresholds: SkewThresholds,
    seed: int = 0,
) -> CrossFit:
    """Alarms on disjoint in-distribution windows against baselines calibrated on random references."""
    count = len(predicted)
    if count < reference_size + window:
        raise ValueError(f"{count} items cannot hold a reference of {reference_size} and a window of {window}")
    rng = np.random.default_rng(seed)
    alarms = windows = 0
    for replication in range(replications):
        order = rng.permutation(count)
        reference, rest = order[:reference_size], order[reference_size:]
        values = {name: column[reference] for name, column in features.items()}
        baseline = compute_baseline(values, predicted[reference], label_names, "cross-fit")
        baseline["thresholds"] = calibrate(
            baseline,
            values,
            predicted[reference],
            false_alarm_rate=false_alarm_rate,
            windows=(window,),
            trials=trials,
            seed=seed + 1 + replication,
        )
        for start in range(0, len(rest) - window + 1, window):
            chosen = rest[start : start + window]
            records = [
                {"features": {name: float(column[i]) for name, column in features.items()}, "label": label_names[p]}
                for i, p in zip(chosen, predicted[chosen], strict=True)
            ]
            alarms += compute_skew(baseline, records, thresholds)["alarm"]
            windows += 1
    return CrossFit(alarms, windows, replications)
