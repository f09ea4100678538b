"""JPEG decoding on the GPU for ``[preprocess] device = "cuda"`` (torchvision's nvJPEG decoder).

Only what the CPU fast path takes goes to the GPU: 8-bit Huffman JPEGs in grey or colour within the pixel
limit, read from their frame header first. Everything else (PNG, WebP, CMYK or 12-bit JPEGs, a file over the
pixel limit, one the GPU decoder refuses as truncated or corrupt) goes to the CPU path, which refuses it with
the same error and code as without a GPU. The photo is decoded on the device with its EXIF orientation,
shrunk there by the factor the CPU path's DCT scaling uses (so both hand the model's preparation a photo of
the same size), and copied back once, small. nvJPEG's IDCT is not libjpeg-turbo's: pixels differ by a grey
level or two (tests/preprocess/test_gpu_decode.py compares both paths on the same photos on a GPU).

Chosen over nvImageCodec because one package (torch + torchvision CUDA wheels) gives the decoder and the
resize on the device; measuring both on a GPU is left to ``gateway bench gpu`` (docs/gpu.md).
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.preprocess.image import DecodedPhoto, _dct_scale, jpeg_frame

DEVICES = ("cpu", "cuda")


class PhotoDecoder(Protocol):
    def decode(self, data: bytes, *, max_pixels: int, min_side: int, mode: str) -> DecodedPhoto | None:
        """The photo decoded on the device, or None: the CPU path decodes (or refuses) it."""
        ...


class DeviceUnavailable(Exception):
    """``preprocess.device = "cuda"`` and no GPU decoder can run here (the message says what is missing)."""


def open_photo_decoder(device: str) -> PhotoDecoder | None:
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
    if not torch.cuda.is_available():
        raise DeviceUnavailable('preprocess.device = "cuda": torch sees no CUDA device on this host')
    return CudaPhotoDecoder(torch, torchvision.io)


class CudaPhotoDecoder:
    """nvJPEG through torchvision on ``cuda:0`` (see the module docstring)."""

    def __init__(self, torch: Any, io: Any, device: str = "cuda:0") -> None:
        self._torch = torch
        self._io = io
        self._device = torch.device(device)
        self._modes = {"L": io.ImageReadMode.GRAY, "RGB": io.ImageReadMode.RGB}

    def decode(self, data: bytes, *, max_pixels: int, min_side: int, mode: str) -> DecodedPhoto | None:
        frame = jpeg_frame(data)
        if frame is None or frame[2] not in (1, 3) or mode not in self._modes:
            return None
        width, height, _ = frame
        if not 0 < width * height <= max_pixels:
            return None
        torch = self._torch
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        try:
            image = self._io.decode_jpeg(
                encoded, mode=self._modes[mode], device=self._device, apply_exif_orientation=True
            )
        except RuntimeError:  # the CPU path says precisely what is wrong with the file
            return None
        if image.shape[1:] != (height, width):  # turned by its EXIF orientation
            width, height = height, width
        scale = _dct_scale((width, height), min_side)
        if scale > 1:
            size = (-(-image.shape[1] // scale), -(-image.shape[2] // scale))
            shrunk = torch.nn.functional.interpolate(image[None].float(), size=size, mode="area")[0]
            image = shrunk.round_().clamp_(0, 255).to(torch.uint8)
        pixels = image[0] if mode == "L" else image.permute(1, 2, 0)
        return DecodedPhoto(pixels.contiguous().cpu().numpy(), width, height)
