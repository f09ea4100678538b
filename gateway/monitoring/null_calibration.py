"""Skew thresholds calibrated on the null: how far a window drifts from the baseline when nothing changed.

For each window size, many pairs (pseudo-reference of the baseline's size, live window of
that size) are drawn with replacement from the reference items the baseline was built
from, and each test's distance (PSI per feature, L-infinity for the predicted labels) is
computed between the two, exactly as the monitor computes it. That is the distribution of
each distance when live traffic comes from the same population as the baseline, with the
noise of both samples.

Where the reference items come in groups (photos made by different renderers: different
phones, pens, papers), each live window first picks the groups' shares at random
(Dirichlet(1)), so a window made mostly by one kind of photographer is part of the null
too; the pseudo-reference keeps the reference's own shares (each group resampled within
itself), as the baseline it stands for does.

Where several reference items are made from one source (each hot dog photo arrives three
ways), the pseudo-references are drawn by source (``clusters``: all items of a drawn
source, sources with replacement): the reference holds as many independent draws from the
population as it has sources, not items, and resampling items would make its noise look
smaller than it is (thresholds too narrow: false alarms on photos the baseline never saw).

Correction across tests (min-p, also called single-step maxT on ranks): each draw's
smallest per-test p-value is taken, and the per-test level is the ``false_alarm_rate``
quantile of those minima, so that on the null *any* test alarms in ``false_alarm_rate``
of the windows (the upload-size features, which raise no alarm, are left out of it). It is
never stricter than Bonferroni and is exact for correlated features
(the digit features are: ink fraction and mean intensity move together).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gateway.monitoring.skew import INFORMATIONAL, PSI_EPSILON

DEFAULT_WINDOWS = (50, 100, 200, 300, 500, 1000, 2000)
DEFAULT_TRIALS = 2000
CHUNK = 200
"""Draws computed at once (bounds the memory: CHUNK x reference size indices)."""


def bin_indices(edges: Sequence[float], values: np.ndarray) -> np.ndarray:
    """The bin of each value on the baseline's edges (values outside count in the first/last bin)."""
    inner = np.asarray(edges, dtype=np.float64)[1:-1]
    return np.searchsorted(inner, np.asarray(values, dtype=np.float64), side="right")


def _psi_rows(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """PSI of each row pair of count matrices [trials, bins] (as ``skew.psi``, vectorised)."""
    e = np.maximum(expected / np.maximum(expected.sum(axis=1, keepdims=True), 1.0), PSI_EPSILON)
    a = np.maximum(actual / np.maximum(actual.sum(axis=1, keepdims=True), 1.0), PSI_EPSILON)
    return np.sum((a - e) * np.log(a / e), axis=1)


def _draw(size: int, trials: int, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices [trials, size] of reference items, drawn with replacement (at random group shares if grouped)."""
    names = np.unique(groups)
    if len(names) == 1:
        return rng.integers(0, len(groups), (trials, size))
    members = [np.flatnonzero(groups == name) for name in names]
    shares = rng.dirichlet(np.ones(len(names)), trials)
    picks = np.empty((trials, size), np.int64)
    for t in range(trials):
        chosen = rng.choice(len(names), size, p=shares[t])
        for g, member in enumerate(members):
            where = chosen == g
            picks[t, where] = member[rng.integers(0, len(member), int(where.sum()))]
    return picks


def _draw_stratified(groups: np.ndarray, trials: int, rng: np.random.Generator) -> np.ndarray:
    """Indices [trials, reference size]: each group's items resampled within the group (its share kept)."""
    members = [np.flatnonzero(groups == name) for name in np.unique(groups)]
    return np.concatenate([m[rng.integers(0, len(m), (trials, len(m)))] for m in members], axis=1)


def _draw_clusters(clusters: np.ndarray, trials: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per trial, the items of as many sources as the reference has, drawn with replacement."""
    names, inverse = np.unique(clusters, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(names))]
    return [np.concatenate([members[k] for k in rng.integers(0, len(names), len(names))]) for _ in range(trials)]


def _histograms(item_bins: np.ndarray, count: int, picks: np.ndarray) -> np.ndarray:
    """Bin counts [trials, count] of each row of drawn items."""
    trials = len(picks)
    offsets = np.arange(trials)[:, np.newaxis] * count
    flat = np.bincount((item_bins[picks] + offsets).ravel(), minlength=trials * count)
    return flat.reshape(trials, count).astype(np.float64)


def _reference_histograms(item_bins: np.ndarray, count: int, reference: np.ndarray | list) -> np.ndarray:
    if isinstance(reference, np.ndarray):
        return _histograms(item_bins, count, reference)
    return np.stack([np.bincount(item_bins[picks], minlength=count) for picks in reference]).astype(np.float64)


def _distances(
    bins: dict[str, np.ndarray], sizes: dict[str, int], reference: np.ndarray | list, window: np.ndarray
) -> dict[str, np.ndarray]:
    """Each test's distance between the drawn pseudo-references and windows (one value per trial)."""
    result = {}
    for name, item_bins in bins.items():
        expected = _reference_histograms(item_bins, sizes[name], reference)
        actual = _histograms(item_bins, sizes[name], window)
        if name == "labels":
            e = expected / expected.sum(axis=1, keepdims=True)
            a = actual / actual.sum(axis=1, keepdims=True)
            result[name] = np.abs(a - e).max(axis=1)
        else:
            result[name] = _psi_rows(expected, actual)
    return result


def _min_p_thresholds(matrix: np.ndarray, names: list[str], false_alarm_rate: float) -> dict:
    """Per-test thresholds at the level where any alarming test crosses in ``false_alarm_rate`` of the draws."""
    # p-value of each draw for each test: the share of draws at least as far (ranks, ties upward)
    order = np.sort(matrix, axis=0)
    p_values = 1.0 - np.stack(
        [np.searchsorted(order[:, j], matrix[:, j], side="left") for j in range(matrix.shape[1])], axis=1
    ) / float(len(matrix))
    alarming = [j for j, name in enumerate(names) if name not in INFORMATIONAL]  # informational: no alarm
    level = float(np.quantile(p_values[:, alarming].min(axis=1), false_alarm_rate, method="lower"))
    thresholds = {name: float(np.quantile(matrix[:, j], 1.0 - level)) for j, name in enumerate(names)}
    return {
        "per_test_level": round(level, 6),
        "features": {name: round(value, 6) for name, value in thresholds.items() if name != "labels"},
        "labels": round(thresholds["labels"], 6),
    }


def calibrate(
    baseline: dict,
    feature_values: dict[str, np.ndarray],
    predicted: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
    false_alarm_rate: float = 0.01,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    trials: int = DEFAULT_TRIALS,
    seed: int = 0,
) -> dict:
    """Per window size, each test's threshold such that on the null any test alarms in ``false_alarm_rate``.

    ``feature_values``: the reference items' features (the ones ``baseline`` was built from);
    ``predicted``: the model's predicted label index of each item (the label test compares
    predicted labels, as live records carry them); ``groups``: which renderer or source made
    each item, or None; ``clusters``: the source each item was made from where several items
    share one (pseudo-references are then drawn by source), or None.
    """
    if not 0.0 < false_alarm_rate < 1.0:
        raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}")
    rng = np.random.default_rng(seed)
    count = len(predicted)
    groups = np.zeros(count, np.int64) if groups is None else np.asarray(groups)
    bins = {name: bin_indices(baseline["features"][name]["edges"], values) for name, values in feature_values.items()}
    sizes = {name: len(baseline["features"][name]["counts"]) for name in feature_values}
    bins["labels"], sizes["labels"] = np.asarray(predicted, np.int64), len(baseline["labels"])
    by_window = {}
    for size in windows:
        chunks = []
        for start in range(0, trials, CHUNK):
            draws = min(CHUNK, trials - start)
            if clusters is None:
                reference = _draw_stratified(groups, draws, rng)
            else:
                reference = _draw_clusters(clusters, draws, rng)
            distances = _distances(bins, sizes, reference, _draw(size, draws, groups, rng))
            chunks.append(np.stack([distances[name] for name in bins], axis=1))
        by_window[str(size)] = _min_p_thresholds(np.concatenate(chunks), list(bins), false_alarm_rate)
    return {
        "false_alarm_rate": false_alarm_rate,
        "method": "two-sample bootstrap of the reference items"
        + (", live windows mixing the groups at Dirichlet(1) shares" if len(np.unique(groups)) > 1 else "")
        + (f", reference drawn by source ({len(np.unique(clusters))} sources)" if clusters is not None else "")
        + f"; min-p correction across {sum(name not in INFORMATIONAL for name in bins)} tests",
        "trials": trials,
        "windows": by_window,
    }
