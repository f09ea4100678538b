"""The baselines recorded beside a model version, one per input surface.

``<model>/<version>/baseline.json`` describes the tensors clients send already prepared
(KServe, TF Serving); ``baseline_photo.json`` describes photos as they reach the model
after the gateway's own decoding and preprocessing. Each holds, per feature, histogram
bin edges (quantiles of the reference items, so every bin holds a similar share) and
counts, mean and standard deviation; the share of each predicted label on the reference
items; and, once calibrated (``null_calibration``), the thresholds per window size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

BINS = 20
SURFACES = ("photo", "tensor")
"""A record's ``input`` field: a photo the gateway prepared, or a tensor the client prepared."""
BASELINE_FILES = {"tensor": "baseline.json", "photo": "baseline_photo.json"}


def quantile_edges(values: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Up to ``bins`` + 1 distinct edges at the values' quantiles (fewer where values repeat)."""
    edges = np.unique(np.round(np.quantile(np.asarray(values, np.float64), np.linspace(0.0, 1.0, bins + 1)), 6))
    return edges if len(edges) > 1 else np.array([edges[0], edges[0] + 1.0])


def compute_baseline(
    features: dict[str, np.ndarray], labels: np.ndarray, label_names: list[str], source: str, surface: str = "tensor"
) -> dict:
    """Histograms of each feature (one value per reference item) and the share of each label."""
    histograms = {}
    for name, values in features.items():
        edges = quantile_edges(values)
        counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
        histograms[name] = {
            "edges": [float(e) for e in edges],
            "counts": counts.tolist(),
            "mean": round(float(values.mean()), 6),
            "std": round(float(values.std()), 6),
        }
    label_counts = np.bincount(labels, minlength=len(label_names))
    return {
        "surface": surface,
        "source": source,
        "items": int(len(labels)),
        "features": histograms,
        "labels": {name: round(float(c) / len(labels), 6) for name, c in zip(label_names, label_counts, strict=True)},
    }


def baseline_path(version_dir: Path, surface: str) -> Path:
    return Path(version_dir) / BASELINE_FILES[surface]


def write_baseline(path: Path, baseline: dict) -> None:
    path.write_text(json.dumps(baseline, indent=1) + "\n")


def read_baseline(path: Path) -> dict:
    return json.loads(path.read_text())
