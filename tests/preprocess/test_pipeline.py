import numpy as np

from gateway.models.repository import load_repository
from gateway.preprocess.image import decode_image
from gateway.preprocess.imagenet import prepare_imagenet_photo
from gateway.preprocess.pipeline import PREPARATIONS, prepare_photo
from tests.badinputs import image_bytes
from tests.conftest import MODEL_REPO

SPECS = load_repository(MODEL_REPO)


def test_the_hot_dog_path_decodes_colour_jpegs_at_m_eighths_and_mnist_does_not() -> None:
    upload = image_bytes("JPEG", (597, 448))  # the mobile client's short side
    where = {"max_pixels": 10_000_000, "min_side": 256, "mode": "RGB"}
    m_eighths = decode_image(upload, **where, eighths=True)
    assert m_eighths.pixels.shape == (280, 374, 3)
    prepared = prepare_photo(upload, SPECS["hotdog"], max_pixels=10_000_000)
    np.testing.assert_array_equal(prepared.tensor, prepare_imagenet_photo(m_eighths.pixels))
    assert (prepared.source_width, prepared.source_height) == (597, 448)
    assert not PREPARATIONS["mnist_digit"].eighths
