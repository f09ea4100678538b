"""``[preprocess] device``: validated at start, refused clearly without a GPU decoder; the device path's
decisions (which photos, what size, which orientation) are the CPU path's; photos handed over together are
decoded in one device call, a bad one isolated; and the prepared inputs and refusals are the CPU path's.

The device-path tests run on four devices: a stand-in for nvJPEG made of OpenCV (libjpeg at full size,
then the same shrink and orientation steps in numpy: always here); the device path's own torch code on the
CPU fed by that stand-in (where torch is installed); torchvision's own decoder on the CPU (where a working
torchvision is installed); and nvJPEG on CUDA (skipped without a GPU).
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import logging
import os
import struct
import threading
from collections.abc import Sequence

import numpy as np
import pytest
from PIL import Image

from gateway.bench.gpu_decode import HostJpegDevice
from gateway.config import ConfigError, load_settings
from gateway.core.errors import GatewayError
from gateway.models.repository import load_repository
from gateway.preprocess.gpu_decode import (
    BatchedDecoder,
    DevicePlan,
    DeviceUnavailable,
    TorchJpegDevice,
    device_plan,
    exif_orientation,
    open_photo_decoder,
)
from gateway.preprocess.image import decode_image
from gateway.preprocess.pipeline import PREPARATIONS, prepare_photo
from tests.badinputs import image_bytes, png_bomb, truncated_jpeg
from tests.conftest import MODEL_REPO, refused_start

SPECS = load_repository(MODEL_REPO)
MAX_PIXELS = 40_000_000
TOLERANCE = {"mean": 2 / 255, "max": 0.25}
"""How far a prepared input decoded on the device may be from the CPU path's, per element: a full decode
shrunk by area averaging is not a scaled IDCT (and nvJPEG's IDCT is not libjpeg-turbo's), a grey level or
two; the digit pipeline's thresholds can move one edge pixel of the 28 x 28 field by a fraction."""


def test_an_unknown_device_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match='preprocess.device must be "cpu" or "cuda", got \'tpu\''):
        load_settings(None, environ={"GATEWAY_PREPROCESS_DEVICE": "tpu", "GATEWAY_TLS_ENABLED": "false"})


def test_a_device_batch_below_one_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="preprocess.batch must be >= 1, got 0"):
        load_settings(None, environ={"GATEWAY_PREPROCESS_BATCH": "0", "GATEWAY_TLS_ENABLED": "false"})


def test_the_cpu_is_the_default_and_needs_no_decoder() -> None:
    settings = load_settings(None, environ={"GATEWAY_TLS_ENABLED": "false"})
    assert settings.preprocess.device == "cpu" and open_photo_decoder("cpu") is None


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="a GPU decoder is installed here")
def test_cuda_without_a_gpu_decoder_is_refused_saying_what_to_install() -> None:
    with pytest.raises(DeviceUnavailable, match=r"is not installed \(pip install '\.\[gpu\]'"):
        open_photo_decoder("cuda")


def test_a_gateway_asked_to_decode_on_a_gpu_it_cannot_use_refuses_to_start(pki) -> None:
    try:
        open_photo_decoder("cuda").close()
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


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header is rewritten to declare ``width`` x ``height`` (a pixel bomb)."""
    data = bytearray(image_bytes("JPEG", (64, 48)))
    frame = data.index(b"\xff\xc0")
    data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def corrupt_jpeg() -> bytes:
    """Complete (it ends in EOI), its scan header naming a component its frame does not have."""
    data = bytearray(image_bytes("JPEG", (256, 256)))
    scan = data.index(b"\xff\xda")
    data[scan + 5] = 0x7F
    return bytes(data)


def _with_app1(payload: bytes, plain: bytes | None = None) -> bytes:
    plain = plain or image_bytes("JPEG", (32, 32))
    return plain[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + plain[2:]


def photos() -> list[bytes]:
    """Digit photos in every EXIF orientation, small to 12 MP, and plain colour and grey JPEGs."""
    from gateway.bench.photos import digit_photo

    rng = np.random.default_rng(7)
    digits = rng.integers(0, 255, (8, 28, 28)).astype(np.uint8)
    sides = (300, 900, 2000, 600, 3000, 1200, 160, 2600)
    photos = [
        digit_photo(d, rng, orientation=o, min_side=m)
        if o in (1, 3, 6, 8)
        else oriented(digit_photo(d, rng, min_side=m), o)
        for d, o, m in zip(digits, range(1, 9), sides, strict=True)
    ]
    return photos + [image_bytes("JPEG", (1600, 1200)), image_bytes("JPEG", (640, 480), "L")]


def oriented(photo: bytes, orientation: int) -> bytes:
    """``photo`` with an EXIF block giving ``orientation`` (the mirrored ones the bench photos do not make)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _with_app1(exif.tobytes(), photo)


PHOTOS = photos()
BAD = {
    "truncated": truncated_jpeg(),
    "corrupt": corrupt_jpeg(),
    "bomb": jpeg_declaring(30_000, 30_000),
    "png bomb": png_bomb(),
    "not an image": b"not an image",
    "empty": b"",
}
"""Photos the CPU path refuses (every one with a 4xx)."""
OTHER_FORMATS = {"cmyk": cmyk_jpeg(), "png": image_bytes("PNG"), "webp": image_bytes("WEBP")}
"""Photos the CPU path decodes and the device does not take."""


# --- the device path's decisions, checked against the CPU path (no device needed) ---


@pytest.mark.parametrize("preparation", sorted(PREPARATIONS))
def test_the_plan_gives_the_cpu_paths_size_and_orientation_for_every_photo(preparation: str) -> None:
    """The reduced-decode rule included: MNIST keeps WORK_SIDE on the long side, the hot dog 256 on the short."""
    chosen = PREPARATIONS[preparation]
    where = {"max_pixels": MAX_PIXELS, "min_side": chosen.min_side, "mode": chosen.mode}
    for photo in PHOTOS:
        plan = device_plan(photo, **where, min_long_side=chosen.min_long_side)
        on_cpu = decode_image(photo, **where, min_long_side=chosen.min_long_side)
        assert plan is not None
        assert plan.upright == (on_cpu.original_width, on_cpu.original_height)
        shrunk = plan.shrunk[::-1] if plan.orientation >= 5 else plan.shrunk
        assert shrunk == on_cpu.pixels.shape[:2]


def test_a_large_digit_photo_is_shrunk_only_as_far_as_the_digit_pipeline_allows() -> None:
    """The rule the first GPU path missed: min_side alone would decode a 12 MP digit photo at 1/8."""
    mnist = PREPARATIONS["mnist_digit"]
    photo = PHOTOS[4]  # 3000 px and more on each side
    plan = device_plan(photo, max_pixels=MAX_PIXELS, min_side=1, mode="L", min_long_side=mnist.min_long_side)
    assert plan is not None and plan.scale == 8 and min(plan.shrunk) >= 3000 // 8
    small = PHOTOS[6]  # 160 px: any shrink would go below WORK_SIDE
    plan = device_plan(small, max_pixels=MAX_PIXELS, min_side=1, mode="L", min_long_side=mnist.min_long_side)
    assert plan is not None and plan.scale == 1


@pytest.mark.parametrize("name", sorted(set(BAD) - {"corrupt"} | set(OTHER_FORMATS)))
def test_what_the_cpu_fast_path_does_not_take_never_reaches_the_device(name: str) -> None:
    photo = {**BAD, **OTHER_FORMATS}[name]
    assert device_plan(photo, max_pixels=MAX_PIXELS, min_side=256, mode="RGB") is None


def test_a_jpeg_cut_short_or_with_data_after_its_end_stays_on_the_cpu() -> None:
    whole = PHOTOS[0]
    assert device_plan(whole, max_pixels=MAX_PIXELS, min_side=256, mode="RGB") is not None
    for changed in (whole[:-1], whole[: len(whole) // 2], whole + b"trailer"):
        assert device_plan(changed, max_pixels=MAX_PIXELS, min_side=256, mode="RGB") is None


def test_the_pixel_limit_is_the_cpu_paths() -> None:
    photo = image_bytes("JPEG", (400, 300))
    assert device_plan(photo, max_pixels=120_000, min_side=1, mode="L") is not None
    assert device_plan(photo, max_pixels=119_999, min_side=1, mode="L") is None
    assert device_plan(photo, max_pixels=MAX_PIXELS, min_side=1, mode="RGBA") is None


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_exif_orientation_is_read_as_pillow_reads_it(orientation: int) -> None:
    photo = PHOTOS[orientation - 1]
    with Image.open(io.BytesIO(photo)) as image:
        assert exif_orientation(photo) == image.getexif().get(0x0112, 1) == orientation


def test_a_big_endian_exif_block_is_read_and_a_malformed_one_counts_as_upright() -> None:
    big_endian = (
        b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08"
        + b"\x00\x01"
        + b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"
        + b"\x00" * 4
    )
    assert exif_orientation(_with_app1(big_endian)) == 6
    with Image.open(io.BytesIO(_with_app1(big_endian))) as image:
        assert image.getexif().get(0x0112) == 6
    for broken in (b"Exif\x00\x00XX", b"Exif\x00\x00II\x2a\x00\xff\xff\x00\x00", big_endian[:-6]):
        assert exif_orientation(_with_app1(broken)) == 1
    assert exif_orientation(_with_app1(big_endian.replace(b"\x00\x06\x00\x00", b"\x00\x09\x00\x00"))) == 1
    assert exif_orientation(image_bytes("JPEG")) == 1


# --- devices the decoder runs on ---


class OpenCvJpegDevice(HostJpegDevice):
    """The host stand-in for nvJPEG, counting its calls. ``gate``: the first call waits for it, so that photos
    queue behind it."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[int] = []
        self.gate = gate
        self.entered = threading.Event()

    def decode(self, photos: Sequence[bytes], mode: str) -> list[np.ndarray]:
        self.calls.append(len(photos))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
            self.gate = None
        return super().decode(photos, mode)


class OpenCvTorchvisionIo:
    """torchvision.io's decode_jpeg made of OpenCV, for torch without torchvision: the device path's own torch
    steps (shrink, orientation, copy back) then run for real, on the CPU."""

    class ImageReadMode:
        GRAY, RGB = "L", "RGB"

    def __init__(self, torch) -> None:
        self._torch = torch

    def decode_jpeg(self, encoded, *, mode: str, device) -> list:
        images = OpenCvJpegDevice().decode([bytes(t.numpy()) for t in encoded], mode)
        return [self._torch.from_numpy(np.ascontiguousarray(image)).to(device) for image in images]


def _torch_device(where: str):
    torch = pytest.importorskip("torch")
    if where == "torch cpu, opencv decode":
        return TorchJpegDevice(torch, OpenCvTorchvisionIo(torch), "cpu")
    io_module = pytest.importorskip("torchvision.io")
    if where == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    return TorchJpegDevice(torch, io_module, "cuda:0" if where == "cuda" else "cpu")


@pytest.fixture(params=["opencv stand-in", "torch cpu, opencv decode", "torchvision cpu", "cuda"])
def decoder(request):
    device = OpenCvJpegDevice() if request.param == "opencv stand-in" else _torch_device(request.param)
    batched = BatchedDecoder(device, max_batch=64)
    yield batched
    batched.close()


def _outcome(photo: bytes, model: str, decoder) -> tuple:
    try:
        prepared = prepare_photo(photo, SPECS[model], max_pixels=MAX_PIXELS, decoder=decoder)
    except GatewayError as exc:
        return (type(exc).__name__, exc.code, str(exc))
    return (prepared.tensor, prepared.source_width, prepared.source_height)


@pytest.mark.parametrize("model", ["hotdog", "mnist"])
def test_the_prepared_inputs_match_the_cpu_paths_within_the_stated_tolerance(model: str, decoder) -> None:
    compared = 0
    for photo in PHOTOS:
        on_cpu, on_device = _outcome(photo, model, None), _outcome(photo, model, decoder)
        if isinstance(on_cpu[0], str):  # the digit pipeline finds no digit in a photo of noise
            assert on_device == on_cpu
            continue
        assert on_device[1:] == on_cpu[1:], "the same upright size of the upload"
        difference = np.abs(on_device[0] - on_cpu[0])
        assert difference.mean() < TOLERANCE["mean"] and difference.max() < TOLERANCE["max"]
        compared += 1
    assert compared >= 8


@pytest.mark.parametrize("model", ["hotdog", "mnist"])
@pytest.mark.parametrize("name", sorted(BAD))
def test_every_refusal_is_the_cpu_paths(model: str, name: str, decoder) -> None:
    on_cpu = _outcome(BAD[name], model, None)
    assert isinstance(on_cpu[0], str), "the CPU path refuses it"
    assert _outcome(BAD[name], model, decoder) == on_cpu


@pytest.mark.parametrize("model", ["hotdog", "mnist"])
@pytest.mark.parametrize("name", sorted(OTHER_FORMATS))
def test_other_formats_get_exactly_the_cpu_paths_inputs(model: str, name: str, decoder) -> None:
    on_cpu, on_device = _outcome(OTHER_FORMATS[name], model, None), _outcome(OTHER_FORMATS[name], model, decoder)
    if isinstance(on_cpu[0], str):
        assert on_device == on_cpu
    else:
        assert np.array_equal(on_device[0], on_cpu[0]) and on_device[1:] == on_cpu[1:]


def test_photos_handed_over_together_are_decoded_in_one_device_call() -> None:
    gate = threading.Event()
    device = OpenCvJpegDevice(gate)
    decoder = BatchedDecoder(device, max_batch=64)
    try:
        plans = [_plan(photo) for photo in PHOTOS[:6]]
        first = decoder.submit(PHOTOS[0], plans[0])
        assert device.entered.wait(30)
        rest = [decoder.submit(photo, plan) for photo, plan in zip(PHOTOS[1:6], plans[1:], strict=True)]
        gate.set()
        decoded = [first.result(30)] + [answer.result(30) for answer in rest]
    finally:
        decoder.close()
    assert device.calls == [1, 5]
    assert all(photo is not None for photo in decoded)


def test_a_batch_is_never_larger_than_the_device_batch() -> None:
    gate = threading.Event()
    device = OpenCvJpegDevice(gate)
    decoder = BatchedDecoder(device, max_batch=2)
    try:
        first = decoder.submit(PHOTOS[0], _plan(PHOTOS[0]))
        assert device.entered.wait(30)
        rest = [decoder.submit(photo, _plan(photo)) for photo in PHOTOS[1:6]]
        gate.set()
        assert all(answer.result(30) is not None for answer in [first, *rest])
    finally:
        decoder.close()
    assert device.calls == [1, 2, 2, 1]


def test_one_bad_photo_in_a_batch_gets_its_own_refusal_and_the_others_are_decoded_on_the_device() -> None:
    gate = threading.Event()
    device = OpenCvJpegDevice(gate)
    decoder = BatchedDecoder(device, max_batch=64)
    spec = SPECS["hotdog"]
    batch = [PHOTOS[1], BAD["corrupt"], PHOTOS[2], PHOTOS[8]]
    try:
        first = decoder.submit(PHOTOS[0], _plan(PHOTOS[0]))
        assert device.entered.wait(30)
        answers = [decoder.submit(photo, _plan(photo)) for photo in batch]
        gate.set()
        decoded = [first.result(30)] + [answer.result(30) for answer in answers]
    finally:
        decoder.close()
    assert device.calls == [1, 4, 1, 1, 1, 1], "the batch fails whole, then each photo alone"
    assert [photo is None for photo in decoded] == [False, False, True, False, False]
    with pytest.raises(GatewayError) as refused:
        prepare_photo(BAD["corrupt"], spec, max_pixels=MAX_PIXELS)
    assert refused.value.code == "invalid_input"


def test_a_failing_device_hands_every_photo_to_the_cpu_path(caplog) -> None:
    class Broken(OpenCvJpegDevice):
        def decode(self, photos, mode):
            raise MemoryError("CUDA out of memory")

    decoder = BatchedDecoder(Broken(), max_batch=8)
    try:
        with caplog.at_level(logging.ERROR, "gateway.preprocess.gpu_decode"):
            prepared = prepare_photo(PHOTOS[0], SPECS["hotdog"], max_pixels=MAX_PIXELS, decoder=decoder)
    finally:
        decoder.close()
    on_cpu = prepare_photo(PHOTOS[0], SPECS["hotdog"], max_pixels=MAX_PIXELS)
    assert np.array_equal(prepared.tensor, on_cpu.tensor)
    assert "decoding 1 photos on the GPU failed" in caplog.text


def test_photos_of_both_models_in_one_batch_are_decoded_in_their_own_modes() -> None:
    device = OpenCvJpegDevice()
    mnist, hotdog = PREPARATIONS["mnist_digit"], PREPARATIONS["imagenet_rgb"]
    grey = device_plan(PHOTOS[3], max_pixels=MAX_PIXELS, min_side=1, mode="L", min_long_side=mnist.min_long_side)
    colour = device_plan(PHOTOS[3], max_pixels=MAX_PIXELS, min_side=hotdog.min_side, mode="RGB")
    from gateway.preprocess.gpu_decode import decode_on_device

    decoded = decode_on_device(device, [(PHOTOS[3], grey), (PHOTOS[3], colour)])
    assert decoded[0].pixels.ndim == 2 and decoded[1].pixels.shape[2] == 3
    assert device.calls == [1, 1]


def test_a_closed_decoder_hands_photos_to_the_cpu_path() -> None:
    decoder = BatchedDecoder(OpenCvJpegDevice(), max_batch=8)
    decoder.close()
    assert decoder.submit(PHOTOS[0], _plan(PHOTOS[0])).result(1) is None


def _plan(photo: bytes) -> DevicePlan:
    plan = device_plan(photo, max_pixels=MAX_PIXELS, min_side=256, mode="RGB")
    assert plan is not None
    return plan


# --- wired into a gateway ---


class CountingDecoder(BatchedDecoder):
    """Says when ``expected`` photos have been handed over (queued, or taken by the device)."""

    def __init__(self, device, max_batch: int, expected: int) -> None:
        super().__init__(device, max_batch)
        self.handed_over = 0
        self.all_handed_over = threading.Event()
        self._expected = expected
        self._count = threading.Lock()

    def submit(self, data: bytes, plan: DevicePlan):
        answer = super().submit(data, plan)
        with self._count:
            self.handed_over += 1
            if self.handed_over == self._expected:
                self.all_handed_over.set()
        return answer


def _cuda_gateway(monkeypatch, decoder_for, **batching):
    """build_gateway with preprocess.device = "cuda" on two preprocess workers, its decoder from ``decoder_for``
    (called with the device batch the gateway asks for); what open_photo_decoder was asked."""
    import gateway.app as app_module

    opened = []

    def open_decoder(device: str, max_batch: int = 64):
        opened.append((device, max_batch))
        return decoder_for(max_batch)

    monkeypatch.setattr(app_module, "open_photo_decoder", open_decoder)
    settings = load_settings(
        overrides={
            "tls": {"enabled": False},
            "models": {"repo": MODEL_REPO},
            "preprocess": {"device": "cuda", "batch": 16},
            "batching": batching,
            "runtime": {"preprocess_workers": 2},
        },
        environ={},
    )
    return app_module.build_gateway(settings), opened


def test_a_gateway_decodes_concurrent_photos_in_one_device_call_and_refuses_only_the_bad_one(monkeypatch) -> None:
    from gateway.core.types import PhotoRequest
    from gateway.security.identity import DEV_IDENTITY

    gate = threading.Event()
    device = OpenCvJpegDevice(gate)
    uploads = [PHOTOS[0], PHOTOS[1], BAD["corrupt"], PHOTOS[3], PHOTOS[5], PHOTOS[7]]
    decoder = CountingDecoder(device, 16, expected=len(uploads))

    async def scenario() -> tuple[list, list]:
        service, opened = _cuda_gateway(monkeypatch, lambda max_batch: decoder)
        try:
            calls = [
                service.plane.classify(PhotoRequest(model="mnist", photo=photo, identity=DEV_IDENTITY))
                for photo in uploads
            ]
            answers = asyncio.gather(*calls, return_exceptions=True)
            # six photos, two workers: only a preprocess pool sized for the device batch hands them all over
            assert await asyncio.to_thread(decoder.all_handed_over.wait, 30)
            gate.set()
            return opened, await answers
        finally:
            gate.set()
            await service.aclose()

    try:
        opened, answers = asyncio.run(scenario())
    finally:
        decoder.close()
    assert opened == [("cuda", 16)]
    # the photos handed over before the decoding thread woke, then the others, queued behind them, in one call
    # (plus one call per photo of the batch the corrupt one failed)
    assert max(device.calls) >= 4 and sum(c for c in device.calls if c > 1) >= 5
    refused = [answer for answer in answers if isinstance(answer, Exception)]
    assert len(refused) == 1 and answers[2] is refused[0] and refused[0].code == "invalid_input"
    assert all(answer.label for answer in answers if answer is not refused[0])


def test_a_gateway_with_batching_off_decodes_every_photo_alone(monkeypatch) -> None:
    decoders = []

    async def scenario() -> list:
        service, opened = _cuda_gateway(
            monkeypatch,
            lambda max_batch: decoders.append(BatchedDecoder(HostJpegDevice(), max_batch)) or decoders[-1],
            enabled=False,
        )
        await service.aclose()
        return opened

    assert asyncio.run(scenario()) == [("cuda", 1)]
    decoders[0].close()
