"""Temperature scaling recovers how over-confident a model is, and its estimate tracks accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.monitoring.temperature import estimated_accuracy, fit_temperature, scaled


def softmax(logits: np.ndarray) -> np.ndarray:
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    return weights / weights.sum(axis=1, keepdims=True)


def overconfident_model(rng: np.random.Generator, size: int, true_temperature: float):
    """Labels drawn from softmax(z / T): a model reporting softmax(z) is over-confident by T."""
    logits = rng.normal(0.0, 3.0, (size, 10))
    truth = np.array([rng.choice(10, p=p) for p in softmax(logits / true_temperature)])
    return softmax(logits), truth


@pytest.mark.parametrize("true_temperature", [0.7, 1.0, 2.5])
def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_with(true_temperature: float) -> None:
    probabilities, truth = overconfident_model(np.random.default_rng(1), 4000, true_temperature)
    assert fit_temperature(probabilities, truth) == pytest.approx(true_temperature, rel=0.1)


def test_the_calibrated_estimate_matches_accuracy_on_new_items_and_the_raw_one_does_not() -> None:
    rng = np.random.default_rng(2)
    temperature = fit_temperature(*overconfident_model(rng, 4000, 2.0))
    probabilities, truth = overconfident_model(rng, 4000, 2.0)
    measured = float((probabilities.argmax(axis=1) == truth).mean())
    assert estimated_accuracy(probabilities, temperature) == pytest.approx(measured, abs=0.02)
    assert estimated_accuracy(probabilities, 1.0) - measured > 0.1


def test_scaling_keeps_the_ranking_and_sums_to_one() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    calibrated = scaled(probabilities, 3.0)
    assert np.allclose(calibrated.sum(axis=1), 1.0)
    assert (calibrated.argmax(axis=1) == probabilities.argmax(axis=1)).all()
    assert calibrated.max() < probabilities.max()
