import io

import numpy as np
import pytest
from PIL import Image

from gateway.bench.photos import digit_photo, digit_png
from gateway.core.errors import InvalidInput
from gateway.preprocess.digits import prepare_digit
from gateway.preprocess.image import decode_image


def prepared(data: bytes) -> np.ndarray:
    return prepare_digit(decode_image(data, max_pixels=10_000_000, min_side=256, mode="L").image)[0]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pixel correlation after a slight blur, so a one-pixel shift of a thin stroke is not a mismatch."""

    def blurred(image: np.ndarray) -> np.ndarray:
        padded = np.pad(np.asarray(image, np.float32), 1)
        return sum(padded[r : r + 28, c : c + 28] for r in range(3) for c in range(3)) / 9

    return float(np.corrcoef(blurred(a).ravel(), blurred(b).ravel())[0, 1])


def test_output_is_mnist_shaped_white_on_black(heldout_sample) -> None:
    x, _ = heldout_sample
    tensor = prepare_digit(Image.open(io.BytesIO(digit_png(x[3]))))
    assert tensor.shape == (1, 28, 28) and tensor.dtype == np.float32
    assert tensor.min() == 0.0 and tensor.max() == 1.0
    border = np.concatenate([tensor[0, :2].ravel(), tensor[0, -2:].ravel(), tensor[0, :, :2].ravel()])
    assert border.max() == 0.0


def test_clean_digits_come_back_close_to_themselves(heldout_sample) -> None:
    x, _ = heldout_sample
    scores = [correlation(prepared(digit_png(d)), d / 255.0) for d in x[::6]]
    assert np.median(scores) > 0.9


def test_photos_come_back_close_to_the_clean_digit(heldout_sample) -> None:
    x, _ = heldout_sample
    rng = np.random.default_rng(1)
    scores = [
        correlation(prepared(digit_photo(d, rng, orientation=int(rng.choice([1, 3, 6, 8])))), d / 255.0) for d in x[:50]
    ]
    assert np.median(scores) > 0.9


def test_dark_ink_on_light_paper_equals_light_ink_on_dark(heldout_sample) -> None:
    digit = heldout_sample[0][10]
    inverted = Image.fromarray(255 - digit, "L")
    buffer = io.BytesIO()
    inverted.save(buffer, "PNG")
    np.testing.assert_allclose(prepared(buffer.getvalue()), prepared(digit_png(digit)), atol=1e-5)


@pytest.mark.parametrize("level", [0, 128, 255])
def test_blank_photo_is_refused(level: int) -> None:
    with pytest.raises(InvalidInput, match="no digit found"):
        prepared(digit_png(np.full((64, 64), level, np.uint8)))
