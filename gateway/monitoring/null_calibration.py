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

Where several reference items are made from one source (each hot dog photo arrives nine
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
DEFAULT_TRIALS = 20000
CHUNK = 250
"""Draws computed at once (bounds the memory: a few CHUNK x reference size float32 matrices)."""


def bin_indices(edges: Sequence[float], values: np.ndarray) -> np.ndarray:
    """The bin of each value on the baseline's edges (values outside count in the first/last bin)."""
    inner = np.asarray(edges, dtype=np.float64)[1:-1]
    return np.searchsorted(inner, np.asarray(values, dtype=np.float64), side="right")


def _psi_rows(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """PSI of each row pair of count matrices [trials, bins] (as ``skew.psi``, vectorised)."""
    e = np.maximum(expected / np.maximum(expected.sum(axis=1, keepdims=True), 1.0), PSI_EPSILON)
    a = np.maximum(actual / np.maximum(actual.sum(axis=1, keepdims=True), 1.0), PSI_EPSILON)
    return np.sum((a - e) * np.log(a / e), axis=1)


def _counts(picks: np.ndarray, count: int) -> np.ndarray:
    """How often each of ``count`` items occurs in each row of ``picks`` [trials, draws] -> [trials, count]."""
    offsets = np.arange(len(picks))[:, np.newaxis] * count
    return np.bincount((picks + offsets).ravel(), minlength=len(picks) * count).reshape(len(picks), count)


def _window_weights(size: int, trials: int, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """How often each reference item is drawn into each window [trials, items]: ``size`` draws with
    replacement, at random group shares (Dirichlet(1)) where the reference comes in groups."""
    names, inverse = np.unique(groups, return_inverse=True)
    if len(names) == 1:
        return _counts(rng.integers(0, len(groups), (trials, size)), len(groups)).astype(np.float32)
    order = np.argsort(inverse, kind="stable")  # items group by group
    members = np.bincount(inverse, minlength=len(names))
    first = np.concatenate([[0], np.cumsum(members)[:-1]])
    per_group = rng.multinomial(size, rng.dirichlet(np.ones(len(names)), trials))
    slot_group = np.repeat(np.tile(np.arange(len(names)), trials), per_group.ravel()).reshape(trials, size)
    within = (rng.random((trials, size)) * members[slot_group]).astype(np.int64)
    return _counts(order[first[slot_group] + within], len(groups)).astype(np.float32)


def _reference_weights(
    groups: np.ndarray, clusters: np.ndarray | None, trials: int, rng: np.random.Generator
) -> np.ndarray:
    """How often each item is drawn into each pseudo-reference [trials, items]: each group's items
    resampled within the group (its share kept), or, with ``clusters``, as many sources as the
    reference has, drawn with replacement, each with all its items."""
    if clusters is not None:
        names, inverse = np.unique(clusters, return_inverse=True)
        sources = _counts(rng.integers(0, len(names), (trials, len(names))), len(names))
        return sources[:, inverse].astype(np.float32)
    members = [np.flatnonzero(groups == name) for name in np.unique(groups)]
    picks = np.concatenate([m[rng.integers(0, len(m), (trials, len(m)))] for m in members], axis=1)
    return _counts(picks, len(groups)).astype(np.float32)


def _one_hot(bins: dict[str, np.ndarray], sizes: dict[str, int]) -> tuple[np.ndarray, list[slice]]:
    """[items, all tests' bins] indicator matrix, and each test's columns: weights @ it = histograms."""
    total = sum(sizes.values())
    matrix = np.zeros((len(next(iter(bins.values()))), total), np.float32)
    columns, start = [], 0
    for name, item_bins in bins.items():
        matrix[np.arange(len(item_bins)), start + item_bins] = 1.0
        columns.append(slice(start, start + sizes[name]))
        start += sizes[name]
    return matrix, columns


def _distances(names: list[str], columns: list[slice], expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Each test's distance [trials, tests] between the pseudo-references' and windows' histograms."""
    result = np.empty((len(expected), len(names)))
    for j, (name, where) in enumerate(zip(names, columns, strict=True)):
        if name == "labels":
            e = expected[:, where] / expected[:, where].sum(axis=1, keepdims=True)
            a = actual[:, where] / actual[:, where].sum(axis=1, keepdims=True)
            result[:, j] = np.abs(a - e).max(axis=1)
        else:
            result[:, j] = _psi_rows(expected[:, where].astype(np.float64), actual[:, where].astype(np.float64))
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
    names = list(bins)
    one_hot, columns = _one_hot(bins, sizes)
    matrices: dict[int, list[np.ndarray]] = {size: [] for size in windows}
    for start in range(0, trials, CHUNK):
        draws = min(CHUNK, trials - start)
        # one set of pseudo-references serves every window size (each size's null is still exact)
        expected = _reference_weights(groups, clusters, draws, rng) @ one_hot
        for size in windows:
            actual = _window_weights(size, draws, groups, rng) @ one_hot
            matrices[size].append(_distances(names, columns, expected, actual))
    by_window = {
        str(size): _min_p_thresholds(np.concatenate(chunks), names, false_alarm_rate)
        for size, chunks in matrices.items()
    }
    return {
        "false_alarm_rate": false_alarm_rate,
        "method": "two-sample bootstrap of the reference items"
        + (", live windows mixing the groups at Dirichlet(1) shares" if len(np.unique(groups)) > 1 else "")
        + (f", reference drawn by source ({len(np.unique(clusters))} sources)" if clusters is not None else "")
        + f"; min-p correction across {sum(name not in INFORMATIONAL for name in bins)} tests",
        "trials": trials,
        "windows": by_window,
    }
