import numpy as np

from gateway.monitoring.baseline import BINS, compute_baseline
from gateway.monitoring.features import digit_features


def test_features_of_a_known_stroke() -> None:
    image = np.zeros((1, 1, 28, 28), np.float32)
    image[0, 0, 5:15, 12:16] = 1.0
    features = {k: float(v[0]) for k, v in digit_features(image).items()}
    assert features["ink_fraction"] == 40 / 784
    assert features["mean_intensity"] == np.float32(40 / 784)
    assert (features["bbox_width"], features["bbox_height"]) == (4.0, 10.0)
    assert features["contrast"] > 0


def test_empty_input_has_zero_extent() -> None:
    features = digit_features(np.zeros((2, 28, 28), np.float32))
    assert features["bbox_width"].tolist() == [0.0, 0.0]


def test_baseline_histograms_cover_every_item(heldout_sample) -> None:
    x, y = heldout_sample
    baseline = compute_baseline(x / 255.0, y, [str(d) for d in range(10)], source="sample")
    assert baseline["items"] == len(x)
    for histogram in baseline["features"].values():
        assert len(histogram["edges"]) == BINS + 1
        assert sum(histogram["counts"]) == len(x)
    assert abs(sum(baseline["labels"].values()) - 1.0) < 1e-5
    assert baseline["labels"]["3"] == float(np.mean(y == 3).round(6))
