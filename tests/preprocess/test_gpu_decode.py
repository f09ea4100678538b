"""``[preprocess] device``: validated at start, refused clearly without a GPU decoder, and on a GPU the same
prepared inputs and the same refusals as the CPU path (those tests skip without a CUDA device)."""

from __future__ import annotations

import importlib.util
import io
import os

import numpy as np
import pytest
from PIL import Image

from gateway.config import ConfigError, load_settings
from gateway.core.errors import GatewayError
from gateway.models.repository import load_repository
from gateway.preprocess.gpu_decode import DeviceUnavailable, open_photo_decoder
from gateway.preprocess.pipeline import prepare_photo
from tests.badinputs import image_bytes, png_bomb, truncated_jpeg
from tests.conftest import MODEL_REPO, refused_start

SPECS = load_repository(MODEL_REPO)
MAX_PIXELS = 40_000_000


def test_an_unknown_device_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match='preprocess.device must be "cpu" or "cuda", got \'tpu\''):
        load_settings(None, environ={"GATEWAY_PREPROCESS_DEVICE": "tpu", "GATEWAY_TLS_ENABLED": "false"})


def test_the_cpu_is_the_default_and_needs_no_decoder() -> None:
    settings = load_settings(None, environ={"GATEWAY_TLS_ENABLED": "false"})
    assert settings.preprocess.device == "cpu" and open_photo_decoder("cpu") is None


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="a GPU decoder is installed here")
def test_cuda_without_a_gpu_decoder_is_refused_saying_what_to_install() -> None:
    with pytest.raises(DeviceUnavailable, match=r"is not installed \(pip install '\.\[gpu\]'"):
        open_photo_decoder("cuda")


def test_a_gateway_asked_to_decode_on_a_gpu_it_cannot_use_refuses_to_start(pki) -> None:
    try:
        open_photo_decoder("cuda")
    except DeviceUnavailable:
        pass
    else:
        pytest.skip("this host can decode on a GPU")
    result = refused_start(
        pki, "--model-repo", str(MODEL_REPO), env={**os.environ, "GATEWAY_PREPROCESS_DEVICE": "cuda"}
    )
    assert 'gateway: error: preprocess.device = "cuda"' in result.stderr


def cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("CMYK", (64, 48), (10, 200, 30, 5)).save(buffer, "JPEG")
    return buffer.getvalue()


def _gpu_decoder():
    try:
        return open_photo_decoder("cuda")
    except DeviceUnavailable as exc:
        pytest.skip(f"no GPU decoder here: {exc}")


def _photos() -> list[bytes]:
    from gateway.bench.photos import digit_photo

    rng = np.random.default_rng(7)
    digits = rng.integers(0, 255, (6, 28, 28)).astype(np.uint8)
    photos = [
        digit_photo(d, rng, orientation=o, min_side=m)
        for d, o, m in zip(digits, (1, 6, 3, 8, 1, 5), (300, 900, 2000, 600, 3000, 1200), strict=True)
    ]
    return photos + [image_bytes("JPEG", (1600, 1200)), image_bytes("JPEG", (640, 480), "L")]


@pytest.mark.parametrize("model", ["hotdog", "mnist"])
def test_on_a_gpu_the_prepared_inputs_match_the_cpu_path(model: str) -> None:
    decoder = _gpu_decoder()
    spec = SPECS[model]
    for photo in _photos():
        on_cpu = prepare_photo(photo, spec, max_pixels=MAX_PIXELS)
        on_gpu = prepare_photo(photo, spec, max_pixels=MAX_PIXELS, decoder=decoder)
        assert (on_gpu.source_width, on_gpu.source_height) == (on_cpu.source_width, on_cpu.source_height)
        difference = np.abs(on_gpu.tensor - on_cpu.tensor)
        assert difference.mean() < 2 / 255 and difference.max() < 0.25, "nvJPEG's IDCT differs a little, no more"


@pytest.mark.parametrize("bad", [truncated_jpeg(), png_bomb(), cmyk_jpeg(), b"not an image", image_bytes("PNG")])
def test_on_a_gpu_every_refusal_is_the_cpu_paths(bad: bytes) -> None:
    decoder = _gpu_decoder()
    spec = SPECS["hotdog"]
    outcomes = []
    for chosen in (None, decoder):
        try:
            outcomes.append(prepare_photo(bad, spec, max_pixels=MAX_PIXELS, decoder=chosen).tensor.shape)
        except GatewayError as exc:
            outcomes.append((type(exc).__name__, exc.code, str(exc)))
    assert outcomes[0] == outcomes[1]
