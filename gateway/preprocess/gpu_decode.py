"""JPEG decoding on the GPU for ``[preprocess] device = "cuda"`` (nvJPEG through torchvision), in batches.

What goes to the device is decided from the file's header alone, by the CPU fast path's own rule
(``device_plan``): complete 8-bit Huffman JPEGs in grey or colour within the pixel limit. Everything else
(PNG, WebP, CMYK or 12-bit JPEGs, pixel bombs, a file cut short) goes to the CPU path without touching the
GPU, and a file the device refuses (corrupt) is handed back to the CPU path too: either way the CPU path
answers it, with the same error and code as without a GPU.

Sizes: the CPU path decodes a large JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, the factor
``image._dct_scale`` picks from the model's ``min_side`` and ``min_long_side``). nvJPEG decodes at full size
only, so the photo is shrunk on the device by the same factor to the size libjpeg gives (ceil(side /
scale)) and copied back small. The shrink averages the aligned ``scale`` x ``scale`` squares of the decoded
pixels, the last ones padded by repeating the edge as a JPEG encoder pads its blocks: at 1/8 that is each
8 x 8 block's DC term, what libjpeg's 1/8 decode outputs; at 1/2 and 1/4 a scaled IDCT is near it.
The hot dog's colour JPEGs are decoded on the CPU at finer scales (M/8, ``Preparation.eighths``); the
device keeps the power-of-two scale for them: both are then resized to 224 x 224, within the stated tolerance.

EXIF orientation: torchvision applies it on the CPU only, so it is read here from the APP1 segment
(``exif_orientation``) and applied on the device after the shrink, as OpenCV applies it after its decode.

Batches: photos handed over at the same moment by the preprocess threads are decoded in one
``decode_jpeg(list, device="cuda")`` call (``BatchedDecoder``), up to ``preprocess.batch`` at a time,
without waiting for more (a photo alone is decoded at once; under load the photos that arrive while one
batch decodes form the next). torchvision returns no partial results: when one photo fails a batched call,
that batch is decoded photo by photo, so each bad photo goes to the CPU path for its own 4xx and the others
are decoded on the device.

The prepared tensors differ from the CPU path's only by what differs between the decodes (nvJPEG's IDCT
against libjpeg-turbo's, an area shrink against a scaled IDCT): the tolerance is stated and checked in
tests/preprocess/test_gpu_decode.py.

Chosen over nvImageCodec because one package (torch + torchvision CUDA wheels) gives the decoder and the
resize on the device; ``gateway bench gpu`` measures both where both are installed (docs/gpu.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from gateway.preprocess.image import DecodedPhoto, _dct_scale
from gateway.preprocess.jpeg_header import ORIENTATIONS, exif_orientation, jpeg_frame

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda")
MODES = ("L", "RGB")
"""The modes both paths decode JPEGs into directly (what the models' preparations ask for)."""


class PhotoDecoder(Protocol):
    def decode(
        self, data: bytes, *, max_pixels: int, min_side: int, mode: str, min_long_side: int = 0
    ) -> DecodedPhoto | None:
        """The photo decoded on the device, or None: the CPU path decodes (or refuses) it."""
        ...


class DeviceUnavailable(Exception):
    """``preprocess.device = "cuda"`` and no GPU decoder can run here (the message says what is missing)."""


@dataclass(frozen=True)
class DevicePlan:
    """What the device makes of one JPEG: the CPU path's size and orientation for it."""

    width: int
    """As stored (before the EXIF orientation)."""
    height: int
    scale: int
    """The CPU path's DCT scale: 1, 2, 4 or 8."""
    orientation: int
    mode: str

    @property
    def shrunk(self) -> tuple[int, int]:
        """(height, width) as stored at 1/scale, rounded up as libjpeg's scaled decode rounds."""
        return (-(-self.height // self.scale), -(-self.width // self.scale))

    @property
    def upright(self) -> tuple[int, int]:
        """(width, height) of the upload, upright: what DecodedPhoto reports as its original size."""
        return (self.height, self.width) if self.orientation >= 5 else (self.width, self.height)


def device_plan(data: bytes, *, max_pixels: int, min_side: int, mode: str, min_long_side: int = 0) -> DevicePlan | None:
    """The plan for a photo the device decodes exactly where the CPU fast path does, or None (the CPU path).

    The CPU fast path's conditions (image.decode_image), plus a complete file: OpenCV refuses a JPEG cut
    short, where nvJPEG might decode what is there.
    """
    frame = jpeg_frame(data)
    if frame is None or frame[2] not in (1, 3) or mode not in MODES or not data.endswith(b"\xff\xd9"):
        return None
    width, height, _ = frame
    if not 0 < width * height <= min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels):
        return None
    scale = _dct_scale((width, height), min_side, min_long_side)
    return DevicePlan(width, height, scale, exif_orientation(data), mode)


class JpegDevice(Protocol):
    """Where the photos are decoded: one call for many, then each copied back at the CPU path's size."""

    def decode(self, photos: Sequence[bytes], mode: str) -> Sequence[Any]:
        """The photos decoded at full size, [C, H, W] on the device; raises when any of them fails."""
        ...

    def to_host(self, image: Any, plan: DevicePlan) -> np.ndarray:
        """Shrunk to ``plan.shrunk``, turned upright, as uint8 [H, W] (L) or [H, W, 3] (RGB) on the host."""
        ...


class TorchJpegDevice:
    """torchvision's decode_jpeg: nvJPEG on ``cuda:N``; on ``cpu`` its libjpeg (what tests without a GPU run)."""

    def __init__(self, torch: Any, io: Any, device: str = "cuda:0") -> None:
        self._torch = torch
        self._io = io
        self._device = torch.device(device)
        self._modes = {"L": io.ImageReadMode.GRAY, "RGB": io.ImageReadMode.RGB}

    def decode(self, photos: Sequence[bytes], mode: str) -> Sequence[Any]:
        encoded = [self._torch.frombuffer(bytearray(photo), dtype=self._torch.uint8) for photo in photos]
        return self._io.decode_jpeg(encoded, mode=self._modes[mode], device=self._device)

    def to_host(self, image: Any, plan: DevicePlan) -> np.ndarray:
        torch = self._torch
        if plan.scale > 1:
            scale, (height, width) = plan.scale, plan.shrunk
            padded = torch.nn.functional.pad(
                image[None].float(), (0, width * scale - plan.width, 0, height * scale - plan.height), mode="replicate"
            )
            shrunk = torch.nn.functional.avg_pool2d(padded, scale)[0]
            image = shrunk.round_().clamp_(0, 255).to(torch.uint8)
        for step in ORIENTATIONS[plan.orientation]:
            image = image.transpose(1, 2) if step == "transpose" else image.flip(2 if step == "flip_x" else 1)
        pixels = image[0] if plan.mode == "L" else image.permute(1, 2, 0)
        return pixels.contiguous().cpu().numpy()


def decode_on_device(device: JpegDevice, photos: Sequence[tuple[bytes, DevicePlan]]) -> list[DecodedPhoto | None]:
    """Decode planned photos in one device call per mode; None for each the device refused (CPU path)."""
    results: list[DecodedPhoto | None] = [None] * len(photos)
    for mode in sorted({plan.mode for _, plan in photos}):
        chosen = [i for i, (_, plan) in enumerate(photos) if plan.mode == mode]
        images = _decode_isolating(device, [photos[i][0] for i in chosen], mode)
        for i, image in zip(chosen, images, strict=True):
            plan = photos[i][1]
            if image is not None and tuple(image.shape[1:]) == (plan.height, plan.width):
                results[i] = DecodedPhoto(device.to_host(image, plan), *plan.upright)
    return results


def _decode_isolating(device: JpegDevice, photos: list[bytes], mode: str) -> list[Any]:
    """All photos in one call; when it fails, each alone, so that only the bad ones come back None."""
    try:
        return list(device.decode(photos, mode))
    except (RuntimeError, ValueError):  # torchvision's word for a file nvJPEG cannot decode
        if len(photos) == 1:
            return [None]
        return [_decode_isolating(device, [photo], mode)[0] for photo in photos]


@dataclass
class _Waiting:
    data: bytes
    plan: DevicePlan
    answer: Future


class BatchedDecoder:
    """The PhotoDecoder of ``device = "cuda"``: gathers what the preprocess threads hand over at the same
    moment and decodes it on one thread, up to ``max_batch`` photos per device call (see the module)."""

    def __init__(self, device: JpegDevice, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._device = device
        self._max_batch = max_batch
        self._waiting: list[_Waiting] = []
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="gpu-decode", daemon=True)
        self._thread.start()

    def decode(
        self, data: bytes, *, max_pixels: int, min_side: int, mode: str, min_long_side: int = 0
    ) -> DecodedPhoto | None:
        plan = device_plan(data, max_pixels=max_pixels, min_side=min_side, mode=mode, min_long_side=min_long_side)
        return None if plan is None else self.submit(data, plan).result()

    def submit(self, data: bytes, plan: DevicePlan) -> Future:
        """Queue one planned photo; the future's result is its DecodedPhoto, or None for the CPU path."""
        answer: Future = Future()
        with self._ready:
            if self._closed:
                answer.set_result(None)
                return answer
            self._waiting.append(_Waiting(data, plan, answer))
            self._ready.notify()
        return answer

    def close(self) -> None:
        """Decode what is queued, then stop the decoding thread."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join()

    def _serve(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._waiting or self._closed)
                if not self._waiting:
                    return
                batch, self._waiting = self._waiting[: self._max_batch], self._waiting[self._max_batch :]
            try:
                results = decode_on_device(self._device, [(one.data, one.plan) for one in batch])
            except Exception:  # the device itself failed (out of memory, a lost context): the CPU path decodes
                log.exception("decoding %d photos on the GPU failed; the CPU decodes them", len(batch))
                results = [None] * len(batch)
            for one, result in zip(batch, results, strict=True):
                one.answer.set_result(result)


def open_photo_decoder(device: str, max_batch: int = 64) -> PhotoDecoder | None:
    """The decoder ``preprocess.device`` asks for (None: the CPU path), or DeviceUnavailable saying what is missing."""
    if device == "cpu":
        return None
    try:
        import torch
        import torchvision.io
    except ImportError as exc:
        raise DeviceUnavailable(
            f'preprocess.device = "cuda" needs a GPU JPEG decoder: {exc.name} is not installed '
            "(pip install '.[gpu]' installs torch and torchvision with CUDA; see docs/gpu.md)"
        ) from None
    except Exception as exc:  # e.g. a torchvision built for another torch: its operators do not register
        raise DeviceUnavailable(
            f'preprocess.device = "cuda": torchvision does not load ({type(exc).__name__}: {exc}); '
            "install the torchvision built for this torch (see docs/gpu.md)"
        ) from None
    if not torch.cuda.is_available():
        raise DeviceUnavailable('preprocess.device = "cuda": torch sees no CUDA device on this host')
    return BatchedDecoder(TorchJpegDevice(torch, torchvision.io), max_batch)
