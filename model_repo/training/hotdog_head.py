"""The hot dog head's folds, fit and scores (numpy only): build_hotdog.py fits the served head with them,
hotdog_cv.py recomputes its cross-validated accuracy without torch."""

from __future__ import annotations

import numpy as np


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each photo, each class spread evenly over the folds."""
    rng = np.random.default_rng(seed)
    assignment = np.zeros(len(labels), dtype=int)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        assignment[members] = np.arange(len(members)) % folds
    return assignment


def fit_head(features: np.ndarray, is_hotdog: np.ndarray, ridge: float, steps: int = 30) -> tuple[np.ndarray, float]:
    """Class-balanced, L2-regularised logistic regression (Newton's method) on standardised features.

    Returns weights and bias that apply to the raw features (the standardisation is folded in).
    """
    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
    design = np.hstack([(features - mean) / scale, np.ones((len(features), 1))])
    target = is_hotdog.astype(np.float64)
    sample_weight = np.where(is_hotdog, (1 - target.mean()) / target.mean(), 1.0)
    penalty = ridge * np.eye(design.shape[1])
    penalty[-1, -1] = 1e-6  # the intercept is not shrunk
    w = np.zeros(design.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-design @ w))
        gradient = design.T @ (sample_weight * (p - target)) + penalty @ w
        hessian = design.T @ (design * (sample_weight * p * (1 - p))[:, None]) + penalty
        w -= np.linalg.solve(hessian, gradient)
    weights = w[:-1] / scale
    return weights, float(w[-1] - weights @ mean)


def predict_head(features: np.ndarray, weights: np.ndarray, bias: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(features @ weights + bias)))


def scores(is_hotdog: np.ndarray, predicted_hotdog: np.ndarray) -> dict[str, float | int]:
    tp = int(np.sum(predicted_hotdog & is_hotdog))
    fp = int(np.sum(predicted_hotdog & ~is_hotdog))
    fn = int(np.sum(~predicted_hotdog & is_hotdog))
    return {
        "photos": int(len(is_hotdog)),
        "hotdogs": int(is_hotdog.sum()),
        "accuracy": round(float(np.mean(predicted_hotdog == is_hotdog)), 4),
        "precision": round(tp / max(tp + fp, 1), 4),
        "recall": round(tp / max(tp + fn, 1), 4),
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
    }
