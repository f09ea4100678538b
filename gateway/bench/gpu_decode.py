"""The decoder comparison of `gateway bench gpu`: 12 MP phone JPEGs decoded for each model by the CPU path and
by every GPU decoder this host has, so that the choice between them is measured (issue 20, item 3).

Candidates: ``cpu`` (the CPU path, OpenCV's libjpeg-turbo with DCT scaling: one thread), ``torchvision``
(nvJPEG, the gateway's ``device = "cuda"``) and ``nvimagecodec`` (nvImageCodec's batched decoder, where the
``nvidia-nvimagecodec-cu12`` wheel is installed), each GPU one at device batches 1 to 64, with the same
shrink and copy back as the gateway's (``TorchJpegDevice.to_host``). For each: photos/s, this process's CPU
ms per photo (what the decoder costs the gateway's cores), and how far its pixels are from the CPU path's.
A candidate this host lacks is named with the reason, never left out. ``--dry-run`` adds ``host_stand_in``
(HostJpegDevice), so that every step of the comparison runs on a CPU before the one run on a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from gateway.models.repository import ModelSpec
from gateway.preprocess.gpu_decode import (
    DevicePlan,
    JpegDevice,
    TorchJpegDevice,
    decode_on_device,
    device_plan,
)
from gateway.preprocess.image import decode_image
from gateway.preprocess.jpeg_header import upright
from gateway.preprocess.pipeline import preparation_for

DECODE_BATCHES = (1, 8, 32, 64)
MAX_PIXELS = 40_000_000


class HostJpegDevice:
    """A stand-in for nvJPEG on a host without a GPU (dry runs, tests): libjpeg at full size, orientation
    ignored as nvJPEG ignores it, then the device path's shrink and orientation steps in numpy; all or
    nothing, as torchvision's batched call."""

    def decode(self, photos: Sequence[bytes], mode: str) -> list[np.ndarray]:
        flag = (cv2.IMREAD_GRAYSCALE if mode == "L" else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
        images = [cv2.imdecode(np.frombuffer(photo, np.uint8), flag) for photo in photos]
        if any(image is None for image in images):
            raise RuntimeError("Error while decoding JPEG images")
        return [i[None] if i.ndim == 2 else cv2.cvtColor(i, cv2.COLOR_BGR2RGB).transpose(2, 0, 1) for i in images]

    def to_host(self, image: np.ndarray, plan: DevicePlan) -> np.ndarray:
        pixels = image[0] if plan.mode == "L" else image.transpose(1, 2, 0)
        if plan.scale > 1:
            (height, width), scale = plan.shrunk, plan.scale
            padding = ((0, height * scale - plan.height), (0, width * scale - plan.width), (0, 0))[: pixels.ndim]
            blocks = np.pad(pixels, padding, mode="edge").reshape(height, scale, width, scale, -1)
            pixels = np.round(blocks.mean(axis=(1, 3))).astype(np.uint8).squeeze(-1 if plan.mode == "L" else ())
        return upright(pixels, plan.orientation)


class NvImageCodecDevice:
    """nvImageCodec's batched decode on ``cuda:0``; its images handed to torch without a copy (CUDA array
    interface), then the gateway's own shrink, orientation and copy back."""

    def __init__(self, nvimgcodec: Any, torch: Any, io: Any) -> None:
        self._torch = torch
        self._decoder = nvimgcodec.Decoder()
        spec = nvimgcodec.ColorSpec
        self._rgb = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=spec.RGB)
        gray = getattr(spec, "GRAY", None)  # not in every release: then RGB, weighted to grey on the device
        self._gray = gray and nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=gray)
        self._host = TorchJpegDevice(torch, io)

    def decode(self, photos: Sequence[bytes], mode: str) -> list[Any]:
        params = self._gray if mode == "L" and self._gray else self._rgb
        images = self._decoder.decode(list(photos), params=params)
        if any(image is None for image in images):
            raise RuntimeError("nvImageCodec could not decode every photo")
        tensors = [self._torch.as_tensor(image, device="cuda") for image in images]
        planar = [t.reshape(*t.shape[:2], -1).permute(2, 0, 1) for t in tensors]  # HWC (or HW) -> CHW
        if mode == "L" and params is self._rgb:
            weights = self._torch.tensor([0.299, 0.587, 0.114], device="cuda").view(3, 1, 1)
            planar = [(p.float() * weights).sum(0, keepdim=True).round_().to(self._torch.uint8) for p in planar]
        return planar

    def to_host(self, image: Any, plan: DevicePlan) -> np.ndarray:
        return self._host.to_host(image, plan)


def gpu_decoders() -> dict[str, JpegDevice | str]:
    """Each GPU decoder candidate, or why this host cannot run it."""
    try:
        import torch
        import torchvision.io
    except Exception as exc:
        missing = f"torch + torchvision do not load: {type(exc).__name__}: {exc}"
        return {"torchvision": missing, "nvimagecodec": missing}
    if not torch.cuda.is_available():
        return {"torchvision": "torch sees no CUDA device", "nvimagecodec": "torch sees no CUDA device"}
    found: dict[str, JpegDevice | str] = {"torchvision": TorchJpegDevice(torch, torchvision.io)}
    try:
        from nvidia import nvimgcodec

        found["nvimagecodec"] = NvImageCodecDevice(nvimgcodec, torch, torchvision.io)
    except Exception as exc:
        found["nvimagecodec"] = f"not installed or not usable: {type(exc).__name__}: {exc}"
    return found


def _rate(step: Callable[[], int], seconds: float) -> dict:
    """Photos/s and CPU ms per photo of ``step`` (which returns how many photos it decoded), after one warm-up."""
    step()
    done, wall, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds or done == 0:
        done += step()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"photos_per_s": round(done / wall, 1), "cpu_ms_per_photo": round(1000 * cpu / done, 3)}


def _cpu_decodes(photos: list[bytes], where: dict) -> Callable[[], int]:
    """One photo after the other through the CPU path, one thread."""
    turn = iter(range(1 << 62))

    def step() -> int:
        decode_image(photos[next(turn) % len(photos)], **where)
        return 1

    return step


def _parity(device: JpegDevice, planned: list[tuple[bytes, DevicePlan]], where: dict) -> dict:
    """Grey levels between the device's pixels and the CPU path's, over the photos (mean, and the worst)."""
    means, worst, mismatched = [], 0, 0
    for (photo, _), decoded in zip(planned, decode_on_device(device, planned), strict=True):
        reference = decode_image(photo, **where).pixels
        if decoded is None or decoded.pixels.shape != reference.shape:
            mismatched += 1
            continue
        difference = np.abs(decoded.pixels.astype(np.int16) - reference)
        means.append(float(difference.mean()))
        worst = max(worst, int(difference.max()))
    mean = round(float(np.mean(means)), 3) if means else None
    return {"mean_levels": mean, "max_levels": worst, "refused": mismatched}


def decoding(
    specs: dict[str, ModelSpec], models: Sequence[str], photos: list[bytes], seconds: float, dry_run: bool = False
) -> dict:
    """Per model: the CPU path, then each GPU candidate at each device batch (see the module docstring)."""
    candidates = gpu_decoders()
    if dry_run:
        candidates["host_stand_in"] = HostJpegDevice()
    figures: dict = {}
    for model in models:
        preparation = preparation_for(specs[model])
        where = {
            "max_pixels": MAX_PIXELS,
            "min_side": preparation.min_side,
            "mode": preparation.mode,
            "min_long_side": preparation.min_long_side,
        }
        planned = [(photo, plan) for photo in photos if (plan := device_plan(photo, **where)) is not None]
        rows: dict = {"cpu": _rate(_cpu_decodes(photos, where), seconds)}
        for name, device in candidates.items():
            if isinstance(device, str):
                rows[name] = device
                continue
            try:
                rows[f"{name}/parity"] = _parity(device, planned, where)
                for batch in DECODE_BATCHES:
                    items = [planned[i % len(planned)] for i in range(batch)]
                    rows[f"{name}/batch_{batch}"] = _rate(
                        lambda items=items, device=device: len(decode_on_device(device, items)), seconds
                    )
            except Exception as exc:  # a candidate that fails on this host is a finding, not a crash
                rows[name] = f"failed: {type(exc).__name__}: {exc}"
        figures[model] = rows
    return figures


def best_gpu(rows: dict) -> tuple[str, dict] | None:
    """The GPU candidate and batch with the most photos/s, if any ran."""
    measured = [(key, row) for key, row in rows.items() if "/batch_" in key and isinstance(row, dict)]
    return max(measured, key=lambda item: item[1]["photos_per_s"]) if measured else None


def comparison_lines(figures: dict) -> list[str]:
    """The comparison as a table a person reads at the end of the run."""
    lines = [f"{'model':8} {'decoder':26} {'photos/s':>10} {'CPU ms/photo':>13}  pixels vs CPU path"]
    for model, rows in figures.items():
        for key, row in rows.items():
            if key.endswith("/parity"):
                continue
            if isinstance(row, str):
                lines.append(f"{model:8} {key:26} {'-':>10} {'-':>13}  {row}")
                continue
            parity = rows.get(f"{key.split('/')[0]}/parity", {})
            shown = f"mean {parity['mean_levels']} max {parity['max_levels']} levels" if parity else "(the reference)"
            lines.append(f"{model:8} {key:26} {row['photos_per_s']:>10} {row['cpu_ms_per_photo']:>13}  {shown}")
        best = best_gpu(rows)
        if best:
            cpu = rows["cpu"]["photos_per_s"]
            lines.append(f"{model:8} best GPU: {best[0]}, {best[1]['photos_per_s'] / cpu:.1f}x one CPU core's decode")
    return lines
