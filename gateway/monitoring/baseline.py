"""The training baseline recorded beside a model version (``<model>/<version>/baseline.json``).

Per feature: histogram bin edges and counts over the training inputs (the live window is
later binned on the same edges), plus mean and standard deviation; and the label
distribution of the training set.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

BINS = 20


def compute_baseline(features: dict[str, np.ndarray], labels: np.ndarray, label_names: list[str], source: str) -> dict:
    """Histograms of each feature (one value per training item) and the share of each label."""
    histograms = {}
    for name, values in features.items():
        low, high = float(values.min()), float(values.max())
        edges = np.linspace(low, high if high > low else low + 1.0, BINS + 1)
        counts, _ = np.histogram(values, bins=edges)
        histograms[name] = {
            "edges": [round(float(e), 6) for e in edges],
            "counts": counts.tolist(),
            "mean": round(float(values.mean()), 6),
            "std": round(float(values.std()), 6),
        }
    label_counts = np.bincount(labels, minlength=len(label_names))
    return {
        "source": source,
        "items": int(len(labels)),
        "features": histograms,
        "labels": {name: round(float(c) / len(labels), 6) for name, c in zip(label_names, label_counts, strict=True)},
    }


def write_baseline(path: Path, baseline: dict) -> None:
    path.write_text(json.dumps(baseline, indent=1) + "\n")


def read_baseline(path: Path) -> dict:
    return json.loads(path.read_text())
