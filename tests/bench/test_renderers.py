import io

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from gateway.bench.renderers import HELD_OUT_RENDERERS, RENDERERS, TRAINING_RENDERERS, render
from gateway.preprocess.digits import prepare_digit
from gateway.preprocess.image import decode_image

MODEL = "model_repo/mnist/1/model.onnx"


def test_the_split_is_disjoint_and_covers_every_renderer() -> None:
    assert len(HELD_OUT_RENDERERS) >= 2 and len(TRAINING_RENDERERS) >= 2
    assert not set(TRAINING_RENDERERS) & set(HELD_OUT_RENDERERS)
    assert set(TRAINING_RENDERERS) | set(HELD_OUT_RENDERERS) == set(RENDERERS)


@pytest.mark.parametrize("name", sorted(RENDERERS))
def test_a_seed_gives_the_same_photo_and_another_seed_another(name: str, heldout_sample) -> None:
    digit = heldout_sample[0][0] / 255.0
    first = render(digit, name, np.random.default_rng(7))
    assert first == render(digit, name, np.random.default_rng(7))
    assert first != render(digit, name, np.random.default_rng(8))
    assert Image.open(io.BytesIO(first)).format in ("JPEG", "PNG")


@pytest.mark.parametrize("name", sorted(RENDERERS))
def test_photos_vary_in_size_and_orientation_within_a_renderer(name: str, heldout_sample) -> None:
    rng = np.random.default_rng(1)
    photos = [Image.open(io.BytesIO(render(heldout_sample[0][i] / 255.0, name, rng))) for i in range(12)]
    assert len({photo.size for photo in photos}) > 6
    assert all(min(photo.size) >= 200 for photo in photos)


def test_some_renderers_store_photos_sideways_with_an_exif_tag(heldout_sample) -> None:
    rng = np.random.default_rng(2)
    orientations = {
        Image.open(io.BytesIO(render(heldout_sample[0][i] / 255.0, name, rng))).getexif().get(0x0112, 1)
        for name in RENDERERS
        for i in range(6)
    }
    assert {1, 6} <= orientations and orientations & {3, 8}


def test_renderers_differ_in_paper_and_ink(heldout_sample) -> None:
    rng = np.random.default_rng(3)
    tones = {}
    for name in RENDERERS:
        photo = Image.open(io.BytesIO(render(heldout_sample[0][0] / 255.0, name, rng))).convert("RGB")
        tones[name] = np.asarray(photo, np.float32).reshape(-1, 3).mean(axis=0)
    names = sorted(tones)
    gaps = [np.abs(tones[a] - tones[b]).max() for i, a in enumerate(names) for b in names[i + 1 :]]
    assert min(gaps) > 1.0


@pytest.mark.parametrize("name", sorted(RENDERERS))
def test_the_gateway_reads_most_rendered_digits_right(name: str, heldout_sample) -> None:
    x, y = heldout_sample
    rng = np.random.default_rng(4)
    rows, truth = [], []
    for digit, label in zip(x[:20], y[:20], strict=True):
        photo = decode_image(render(digit / 255.0, name, rng), max_pixels=40_000_000, min_side=256, mode="L")
        try:
            rows.append(prepare_digit(photo.image))
        except Exception:  # a photo the gateway refuses (400) counts as wrong
            continue
        truth.append(label)
    session = ort.InferenceSession(MODEL)
    predicted = session.run(None, {session.get_inputs()[0].name: np.stack(rows).astype(np.float32)})[0].argmax(axis=1)
    assert (predicted == np.asarray(truth)).sum() >= 17


def test_an_unknown_renderer_names_the_known_ones(heldout_sample) -> None:
    with pytest.raises(KeyError, match="ballpoint_office"):
        render(heldout_sample[0][0] / 255.0, "crayon", np.random.default_rng(0))
