"""Fuzz the photo decoder and both preparations with broken and hostile image bytes."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from gateway.models.repository import load_repository
from gateway.preprocess.image import decode_image
from gateway.preprocess.pipeline import prepare_photo
from tests.conftest import MODEL_REPO
from tests.fuzz.strategies import FUZZ, decodes_or_refuses, mutated_images

SPECS = load_repository(MODEL_REPO)
MAX_PIXELS = 4_000_000


@FUZZ
@given(data=mutated_images() | st.binary(max_size=2048), mode=st.sampled_from(["L", "RGB"]))
def test_decode_image_returns_an_image_or_a_clear_error(data: bytes, mode: str) -> None:
    photo = decodes_or_refuses(lambda: decode_image(data, max_pixels=MAX_PIXELS, min_side=32, mode=mode))
    if photo is not None:
        assert photo.image.mode == mode
        assert photo.image.width * photo.image.height <= MAX_PIXELS
        assert photo.original_width > 0 and photo.original_height > 0


@FUZZ
@given(data=mutated_images(), model=st.sampled_from(sorted(SPECS)))
def test_prepare_photo_gives_the_models_exact_input_or_a_clear_error(data: bytes, model: str) -> None:
    spec = SPECS[model]
    prepared = decodes_or_refuses(lambda: prepare_photo(data, spec, max_pixels=MAX_PIXELS))
    if prepared is not None:
        assert prepared.tensor.shape == spec.input.dims and prepared.tensor.dtype == np.float32
        assert np.isfinite(prepared.tensor).all()
