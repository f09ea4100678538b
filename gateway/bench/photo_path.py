"""Bytes to input tensor for a 12-megapixel phone JPEG: the gateway's path next to a full-size decode.

`gateway bench photo --model hotdog`

The photo is a real one from the hot dog evaluation set, enlarged to 4000 x 3000 with a little
sensor-like noise (so it compresses like a camera's JPEG, a few MB at quality 90) and stored
sideways with an EXIF orientation tag, as phones store portrait photos. Timed, each ``--repeat``
times, on one thread:

- gateway: ``prepare_photo`` (header checks, draft decode at 1/8 scale, EXIF, resize + centre
  crop, float tensor): what the gateway does for each upload;
- full decode: Pillow decoding every pixel of the same file (and turning it upright);
- full decode + resize: the same, then the same resize and crop, as a pipeline without draft
  mode would.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from gateway.bench.photos import EXIF_ORIENTATION_TAG, STORED_TRANSPOSE
from gateway.models.repository import ModelSpec, load_repository
from gateway.preprocess.imagenet import prepare_imagenet_photo
from gateway.preprocess.pipeline import prepare_photo

DEFAULT_PHOTO = Path("model_repo/training/hotdog_photos/hotdog/hol_hot_dogs-0001.jpg")


def phone_jpeg(source: Path, size: tuple[int, int] = (4000, 3000), quality: int = 90, seed: int = 0) -> bytes:
    """``source`` enlarged to ``size`` with sensor-like noise, stored sideways with EXIF orientation 6."""
    with Image.open(source) as photo:
        large = photo.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    noise = np.random.default_rng(seed).normal(0.0, 6.0, (size[1], size[0], 3))
    pixels = np.clip(np.asarray(large, np.float32) + noise, 0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6
    buffer = io.BytesIO()
    Image.fromarray(pixels).transpose(STORED_TRANSPOSE[6]).save(buffer, "JPEG", quality=quality, exif=exif)
    return buffer.getvalue()


def full_decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return ImageOps.exif_transpose(image).convert("RGB")


def p50_ms(step: Callable[[], object], repeat: int) -> float:
    step()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def measure(data: bytes, spec: ModelSpec, repeat: int) -> dict[str, float]:
    limit = 50_000_000
    return {
        "gateway_p50_ms": p50_ms(lambda: prepare_photo(data, spec, max_pixels=limit), repeat),
        "full_decode_p50_ms": p50_ms(lambda: full_decode(data), repeat),
        "full_decode_resize_p50_ms": p50_ms(lambda: prepare_imagenet_photo(full_decode(data)), repeat),
    }


def main(args: argparse.Namespace) -> None:
    spec = load_repository(args.model_repo)[args.model]
    results = []
    for quality in args.qualities:
        data = phone_jpeg(args.photo, quality=quality)
        width, height = full_decode(data).size
        figures = measure(data, spec, args.repeat)
        speedup = figures["full_decode_resize_p50_ms"] / figures["gateway_p50_ms"]
        print(
            f"{width}x{height} JPEG q{quality}, {len(data) / 1e6:.1f} MB: "
            f"gateway p50 {figures['gateway_p50_ms']:.1f} ms; "
            f"full decode {figures['full_decode_p50_ms']:.1f} ms; full decode + resize "
            f"{figures['full_decode_resize_p50_ms']:.1f} ms ({speedup:.1f}x the gateway's)"
        )
        results.append({"quality": quality, "megabytes": round(len(data) / 1e6, 2), "speedup": round(speedup, 2)})
        results[-1] |= {name: round(value, 2) for name, value in figures.items()}
    print(json.dumps({"photo": str(args.photo), "results": results}))


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("photo", help="bytes to tensor for a 12 MP phone JPEG vs a full-size decode")
    parser.add_argument("--model-repo", type=Path, default=Path("model_repo"))
    parser.add_argument("--model", default="hotdog")
    parser.add_argument("--photo", type=Path, default=DEFAULT_PHOTO, help="a real photo to enlarge")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument(
        "--qualities", type=lambda text: [int(q) for q in text.split(",")], default=[90, 75], help="JPEG qualities"
    )
    parser.set_defaults(handler=main)
