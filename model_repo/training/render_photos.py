"""Render MNIST digits as phone photos and prepare them exactly as the gateway does: training views or test sets.

Runs in the gateway's environment (it uses ``gateway.bench.renderers`` and the gateway's own
photo preprocessing, so the model trains on what it will be served)::

    .venv/bin/python model_repo/training/render_photos.py --split train --per-digit 2 \\
        --out model_repo/training/.cache/photo_views.npz
    .venv/bin/python model_repo/training/render_photos.py --split heldout \\
        --renderers red_pen_screenshot --out model_repo/training/.cache/heldout_red_pen_screenshot.npz

``--split train`` defaults to ``TRAINING_RENDERERS`` (view k of digit i comes from renderer
``(i * per_digit + k) mod len(renderers)``, so the renderers are used equally and each digit is
seen by several); ``--split heldout`` renders the 2,000 held-out digits once each. Writes ``x``
float16 [N, per_digit, 1, 28, 28] (the prepared model inputs), ``y``, ``renderer`` [N, per_digit],
``taken`` [N, per_digit] (False: the gateway refused the photo, 400 "no digit found"; training views
are drawn again up to 3 times instead),
the split and its seed, and the SHA-256 of ``renderers.py`` (which renderer code made them).

``--shadows P`` (training views only): on a share ``P`` of the photos, a cast shadow laid over the
rendered picture before the gateway sees it (``cast_shadow``: a hand's or a phone's shadow, a soft
straight edge anywhere in the frame, 15-55% darker), then stored again as JPEG (quality 55-92).
None of the training renderers casts a shadow; this is a generic augmentation of the photo, not a
copy of any renderer.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import mnist_data
import numpy as np
from PIL import Image

from gateway.bench import renderers
from gateway.bench.renderers import HELD_OUT_RENDERERS, TRAINING_RENDERERS, render
from gateway.core.errors import InvalidInput
from gateway.models.repository import load_repository
from gateway.preprocess.pipeline import prepare_photo

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_PIXELS = 40_000_000
CHUNK = 200
SHADOW_DEPTH = (0.15, 0.55)
"""How much of the light the shadow takes away, uniform."""
SHADOW_SOFTNESS = (0.003, 0.08)
"""Width of the shadow's edge as a fraction of the picture's diagonal, uniform (sharp sun to diffuse lamp)."""
JPEG_QUALITY = (55, 92)


def cast_shadow(photo: bytes, rng: np.random.Generator) -> bytes:
    """``photo`` with a cast shadow over part of it: a straight soft edge at any angle and any place in the
    frame, the far side darker; stored again as JPEG with its EXIF tags (orientation) kept."""
    picture = Image.open(io.BytesIO(photo))
    exif = picture.getexif()
    pixels = np.asarray(picture.convert("RGB"), np.float32)
    height, width = pixels.shape[:2]
    rows = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, np.newaxis] * height
    cols = np.linspace(-0.5, 0.5, width, dtype=np.float32)[np.newaxis, :] * width
    diagonal = float(np.hypot(height, width))
    angle = float(rng.uniform(0.0, 2.0 * np.pi))
    offset = float(rng.uniform(-0.4, 0.4)) * diagonal
    edge = (np.cos(angle) * cols + np.sin(angle) * rows - offset) / (float(rng.uniform(*SHADOW_SOFTNESS)) * diagonal)
    shade = 1.0 / (1.0 + np.exp(-np.clip(edge, -30.0, 30.0)))
    light = 1.0 - float(rng.uniform(*SHADOW_DEPTH)) * shade
    shadowed = Image.fromarray(np.clip(pixels * light[..., np.newaxis], 0, 255).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    shadowed.save(buffer, "JPEG", quality=int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)), exif=exif)
    return buffer.getvalue()


def _prepare_chunk(job: tuple[np.ndarray, list[str], list[int], int, float]) -> tuple[np.ndarray, np.ndarray]:
    """Render and prepare one chunk of (digit, renderer, seed) jobs: float16 [n, 1, 28, 28] and whether the
    gateway took each photo. A photo it refuses (400: no digit found) is drawn again with the next seeds, up
    to ``retries`` times (training views); with 0 retries its row stays zeros and counts as refused. A share
    ``shadows`` of the photos get a cast shadow (``cast_shadow``)."""
    digits, names, seeds, retries, shadows = job
    spec = load_repository(REPO_ROOT / "model_repo")["mnist"]
    rows = np.zeros((len(digits), 1, mnist_data.IMAGE_SIZE, mnist_data.IMAGE_SIZE), np.float16)
    taken = np.zeros(len(digits), bool)
    for i, (digit, name, seed) in enumerate(zip(digits, names, seeds, strict=True)):
        for attempt in range(retries + 1):
            rng = np.random.default_rng([seed, attempt])
            photo = render(digit.astype(np.float32) / 255.0, name, rng)
            if shadows > 0 and rng.random() < shadows:
                photo = cast_shadow(photo, rng)
            try:
                rows[i] = prepare_photo(photo, spec, max_pixels=MAX_PIXELS).tensor
            except InvalidInput:
                continue
            taken[i] = True
            break
    return rows, taken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("train", "heldout"), required=True)
    parser.add_argument("--renderers", help="comma-separated names (default: TRAINING_RENDERERS for train)")
    parser.add_argument("--per-digit", type=int, default=1)
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, help="only the first N digits of the split (CPU-bound: ~60 ms a photo)")
    parser.add_argument("--shadows", type=float, default=0.0, help="share of training photos given a cast shadow")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.shadows and args.split != "train":
        raise SystemExit("--shadows augments training views; held-out sets are rendered as their renderers make them")
    names = args.renderers.split(",") if args.renderers else list(TRAINING_RENDERERS)
    unknown = [n for n in names if n not in renderers.RENDERERS]
    if unknown:
        raise SystemExit(f"unknown renderer(s) {unknown}; known: {', '.join(renderers.RENDERERS)}")
    if args.split == "train" and set(names) & set(HELD_OUT_RENDERERS):
        raise SystemExit(f"{sorted(set(names) & set(HELD_OUT_RENDERERS))} are held out: never train on them")
    images, labels = mnist_data.load_digits(mnist_data.fetch_package())
    train_x, train_y, test_x, test_y = mnist_data.split(images, labels)
    x, y = (train_x, train_y) if args.split == "train" else (test_x, test_y)
    x, y = x[: args.limit], y[: args.limit]
    k = args.per_digit
    jobs_names = [names[(i * k + view) % len(names)] for i in range(len(x)) for view in range(k)]
    seeds = [args.seed * 1_000_003 + j for j in range(len(jobs_names))]
    digits = np.repeat(x, k, axis=0)
    retries = 3 if args.split == "train" else 0
    chunks = [
        (digits[i : i + CHUNK], jobs_names[i : i + CHUNK], seeds[i : i + CHUNK], retries, args.shadows)
        for i in range(0, len(digits), CHUNK)
    ]
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        prepared, taken = [], []
        for done, (rows, ok) in enumerate(pool.map(_prepare_chunk, chunks), 1):
            prepared.append(rows)
            taken.append(ok)
            print(f"\r{done * CHUNK:,} of {len(digits):,} photos", end="", flush=True)
    seconds = time.perf_counter() - started
    refused = int((~np.concatenate(taken)).sum())
    print(
        f"\nrendered and prepared {len(digits):,} photos in {seconds:.0f} s with {', '.join(names)}; refused {refused}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        x=np.concatenate(prepared).reshape(len(x), k, 1, mnist_data.IMAGE_SIZE, mnist_data.IMAGE_SIZE),
        y=y,
        renderer=np.asarray(jobs_names).reshape(len(x), k),
        taken=np.concatenate(taken).reshape(len(x), k),
        renderers=np.asarray(names),
        split=args.split,
        split_seed=mnist_data.SPLIT_SEED,
        seed=args.seed,
        shadows=args.shadows,
        renderers_sha256=hashlib.sha256(Path(renderers.__file__).read_bytes()).hexdigest(),
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
