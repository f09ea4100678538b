"""The ways a hot dog photo reaches the gateway: a split the baselines and the bench rely on."""

import csv
import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from gateway.bench.hotdog_uploads import HELD_OUT_WAYS, TRAINING_WAYS, every_way, one_way_each, upright_rgb
from gateway.preprocess.image import decode_image
from tests.conftest import REPO_ROOT

PHOTOS = REPO_ROOT / "model_repo/training/hotdog_photos"
WAYS = {**TRAINING_WAYS, **HELD_OUT_WAYS}


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    with (PHOTOS / "labels.csv").open() as rows:
        paths = [row["path"] for row in csv.DictReader(rows)]
    return [(PHOTOS / path).read_bytes() for path in paths[::60]]


def test_the_split_is_disjoint_in_names_and_in_code() -> None:
    assert len(TRAINING_WAYS) >= 3 and len(HELD_OUT_WAYS) >= 3
    assert not set(TRAINING_WAYS) & set(HELD_OUT_WAYS)
    assert not set(TRAINING_WAYS.values()) & set(HELD_OUT_WAYS.values())


@pytest.mark.parametrize("name", sorted(WAYS))
def test_each_way_is_seeded_and_the_gateway_reads_it_upright(name: str, photos: list[bytes]) -> None:
    way = WAYS[name]
    for data in photos:
        upright = upright_rgb(data)
        first = way(data, upright, np.random.default_rng(7))
        assert first == way(data, upright, np.random.default_rng(7))
        assert Image.open(io.BytesIO(first)).format in ("JPEG", "PNG", "WEBP")
        decoded = decode_image(first, max_pixels=40_000_000, min_side=1, mode="RGB")
        shown = ImageOps.exif_transpose(Image.open(io.BytesIO(first)))
        assert (decoded.original_width, decoded.original_height) == shown.size, name
        assert (shown.width > shown.height) == (upright.width > upright.height) or name.startswith("square"), name


def test_the_training_ways_cover_encoders_orientations_and_tone_edits(photos: list[bytes]) -> None:
    uploads, kinds, sources = every_way(photos, TRAINING_WAYS, seed=3)
    assert sources == sorted(sources) and set(kinds) == set(range(len(TRAINING_WAYS)))
    images = [Image.open(io.BytesIO(upload)) for upload in uploads]
    assert {image.format for image in images} == {"JPEG", "PNG", "WEBP"}
    assert {image.getexif().get(0x0112, 1) for image in images} >= {1, 3, 6, 8}
    brightness = [np.asarray(image.convert("L"), np.float32).mean() for image in images]
    per_photo = np.reshape(brightness, (len(photos), len(TRAINING_WAYS)))
    assert (per_photo.max(axis=1) - per_photo.min(axis=1)).min() > 2.0  # exposure varies for every photo


def test_one_way_each_sends_every_photo_once_in_a_way_picked_at_random(photos: list[bytes]) -> None:
    uploads, kinds = one_way_each(photos * 4, HELD_OUT_WAYS, np.random.default_rng(5))
    assert len(uploads) == len(kinds) == 4 * len(photos)
    assert set(kinds) == set(range(len(HELD_OUT_WAYS)))


def test_a_shift_reaches_every_way(photos: list[bytes]) -> None:
    grey = lambda image: image.convert("L").convert("RGB")  # noqa: E731
    uploads, _ = one_way_each(photos * 3, HELD_OUT_WAYS, np.random.default_rng(6), grey)
    for upload in uploads:
        pixels = np.asarray(Image.open(io.BytesIO(upload)).convert("RGB"), np.int16)
        assert np.abs(pixels[..., 0] - pixels[..., 2]).mean() < 2.0
