import numpy as np
import pytest

from gateway.monitoring.baseline import BINS, compute_baseline
from gateway.monitoring.features import digit_features, photo_features, source_features


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
    baseline = compute_baseline(digit_features(x / 255.0), y, [str(d) for d in range(10)], source="sample")
    assert baseline["items"] == len(x)
    for histogram in baseline["features"].values():
        assert 2 <= len(histogram["edges"]) <= BINS + 1  # quantile edges: fewer where values repeat
        assert np.all(np.diff(histogram["edges"]) > 0)
        assert sum(histogram["counts"]) == len(x)
    contrast = baseline["features"]["contrast"]["counts"]  # continuous: every bin holds about 1/20
    assert len(contrast) == BINS and max(contrast) <= 2 * len(x) / BINS
    assert abs(sum(baseline["labels"].values()) - 1.0) < 1e-5
    assert baseline["labels"]["3"] == float(np.mean(y == 3).round(6))


def test_photo_features_of_known_colours() -> None:
    batch = np.zeros((2, 3, 4, 4), np.float32)
    batch[0, 0] = 1.0  # pure red
    batch[1, :, :2] = 0.5  # top half mid grey, bottom half black
    features = {k: v.tolist() for k, v in photo_features(batch).items()}
    assert features["red_mean"] == [1.0, 0.25]
    assert features["green_mean"] == [0.0, 0.25]
    assert features["saturation"] == [1.0, 0.0]
    assert features["brightness"][0] == pytest.approx(0.299)
    assert features["brightness"][1] == pytest.approx(0.25)
    assert features["contrast"] == pytest.approx([0.0, 0.25])


def test_source_features_of_a_phone_photo() -> None:
    features = source_features(np.array([[4000, 3000], [1080, 1920]]))
    assert features["megapixels"].tolist() == [12.0, 1080 * 1920 / 1e6]
    assert features["aspect_ratio"].tolist() == [4000 / 3000, 1080 / 1920]


def test_stroke_width_slant_and_grey_share_of_known_strokes() -> None:
    image = np.zeros((3, 28, 28), np.float32)
    image[0, 4:24, 13:15] = 1.0  # an upright stroke 2 px wide
    image[1, 4:24, 12:16] = 1.0  # 4 px wide
    for row in range(4, 24):  # leaning right going down: the column grows with the row
        image[2, row, 4 + row // 2 : 6 + row // 2] = 1.0
    image[2, 4:24][image[2, 4:24] == 0] = 0.0
    features = digit_features(image)
    assert features["stroke_width"][1] > 1.5 * features["stroke_width"][0] > 0
    assert features["slant"][0] == 0.0 and features["slant"][2] == pytest.approx(0.5, abs=0.05)
    assert features["grey_share"][0] == 0.0
    faint = digit_features(image[:1] * 0.4)
    assert faint["grey_share"][0] == 1.0
