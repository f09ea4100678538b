"""A photo reference kept as a cache file comes back as it was made (build_monitoring and bench skew share it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gateway.bench.photos import digit_png
from gateway.models.repository import load_repository
from gateway.monitoring.reference import Reference, photo_reference
from tests.conftest import MODEL_REPO


def test_a_saved_photo_reference_loads_back_equal(tmp_path: Path, heldout_sample) -> None:
    x, y = heldout_sample
    spec = load_repository(MODEL_REPO)["mnist"]
    made = photo_reference([digit_png(d) for d in x[:6]], list(y[:6]), [0, 1] * 3, spec)
    path = tmp_path / "cache" / "reference.npz"
    made.save(path)
    loaded = Reference.load(path)
    for name in ("tensors", "sizes", "truth", "groups"):
        assert np.array_equal(getattr(loaded, name), getattr(made, name)), name
    assert loaded.refused == made.refused
    assert loaded.features("mnist_digit").keys() == made.features("mnist_digit").keys()
