"""The accuracy report itself, on the committed held-out sample (300 digits)."""

import numpy as np

from gateway.bench.accuracy import evaluate, photo_set_accuracy
from tests.conftest import MODEL_REPO


def test_accuracy_survives_preprocessing_and_photos(heldout_sample) -> None:
    x, y = heldout_sample
    results = evaluate(MODEL_REPO, x, y, seed=0)
    assert results["digits"] == 300
    assert results["tensors"] >= 0.97
    assert results["clean_png"] >= 0.97
    assert results["phone_photos"] >= 0.95


def test_a_prepared_photo_set_counts_refused_photos_as_wrong(heldout_sample, tmp_path) -> None:
    x, y = heldout_sample
    rows = (x[:40].astype(np.float32) / 255.0)[:, np.newaxis, np.newaxis]
    taken = np.ones((40, 1), bool)
    taken[:4] = False  # four photos the gateway refused
    path = tmp_path / "set.npz"
    np.savez(path, x=rows.astype(np.float16), y=y[:40], taken=taken, renderers=np.asarray(["clean"]))
    result = photo_set_accuracy(MODEL_REPO, path, "1")
    assert (result["photos"], result["refused"], result["renderers"]) == (40, 4, ["clean"])
    assert result["accuracy"] <= 36 / 40 and result["accuracy"] >= 34 / 40
