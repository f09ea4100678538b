"""The accuracy report itself, on the committed held-out sample (300 digits)."""

from gateway.bench.accuracy import evaluate
from tests.conftest import MODEL_REPO


def test_accuracy_survives_preprocessing_and_photos(heldout_sample) -> None:
    x, y = heldout_sample
    results = evaluate(MODEL_REPO, x, y, seed=0)
    assert results["digits"] == 300
    assert results["tensors"] >= 0.97
    assert results["clean_png"] >= 0.97
    assert results["phone_photos"] >= 0.95
