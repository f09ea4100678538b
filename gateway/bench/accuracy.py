"""`gateway bench accuracy`: how much of the model's accuracy survives photos.

Three figures on the same held-out digits, side by side:
- tensors: the 28 x 28 digits fed to the model directly (the training script's figure);
- clean PNGs: each digit as a PNG through the gateway's decoding and preprocessing;
- phone photos: each digit as dark ink on a larger, unevenly lit, noisy, tinted, JPEG-compressed
  photo stored with a random EXIF orientation, through the same preprocessing.

And, with ``--photo-set NPZ`` (repeatable), photo sets already rendered and prepared by
``model_repo/training/render_photos.py`` (e.g. the held-out digits by a renderer no version
was trained with); a photo the gateway refused (400, no digit found) counts as wrong. With
several ``--version`` options, every figure for every version, side by side.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gateway.backends.onnxruntime import OnnxRuntimeBackend
from gateway.bench.photos import digit_photo, digit_png
from gateway.models.repository import load_repository
from gateway.preprocess.pipeline import prepare_photo

DEFAULT_DIGITS = Path("tests/data/mnist_heldout_sample.npz")
ORIENTATIONS = (1, 3, 6, 8)
BATCH = 64


def _accuracy(tensors: np.ndarray, labels: np.ndarray, infer: Callable[[np.ndarray], np.ndarray]) -> float:
    predictions = np.concatenate([infer(tensors[i : i + BATCH]).argmax(axis=1) for i in range(0, len(tensors), BATCH)])
    return float((predictions == labels).mean())


def evaluate(
    model_repo: Path,
    digits: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = 0,
    version: str | None = None,
    inputs: dict[str, np.ndarray] | None = None,
) -> dict:
    """Accuracy of ``version`` on the digits as tensors, clean PNGs and phone photos.

    ``inputs`` (from ``prepared_inputs``) lets several versions share one rendering of the photos.
    """
    spec = load_repository(model_repo)["mnist"]
    version = version or spec.latest_version
    backend = OnnxRuntimeBackend(spec.versions[version], spec.input, spec.output, threads=2)
    started = time.perf_counter()
    inputs = inputs if inputs is not None else prepared_inputs(model_repo, digits, seed)
    results = {
        "model": spec.name,
        "version": version,
        "digits": len(digits),
        "seed": seed,
        **{key: _accuracy(inputs[key], labels, backend.infer_sync) for key in ("tensors", "clean_png", "phone_photos")},
        "mean_photo_bytes": int(inputs["mean_photo_bytes"]),
    }
    results["seconds"] = round(time.perf_counter() - started, 1)
    backend.close()
    return results


def prepared_inputs(model_repo: Path, digits: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The digits as model inputs three ways: tensors, clean PNGs and phone photos through the gateway."""
    spec = load_repository(model_repo)["mnist"]
    rng = np.random.default_rng(seed)

    def through_gateway(photos: list[bytes]) -> np.ndarray:
        return np.stack([prepare_photo(p, spec, max_pixels=40_000_000).tensor for p in photos])

    photos = [digit_photo(d, rng, orientation=int(rng.choice(ORIENTATIONS))) for d in digits]
    return {
        "tensors": (digits.astype(np.float32) / 255.0)[:, np.newaxis],
        "clean_png": through_gateway([digit_png(d) for d in digits]),
        "phone_photos": through_gateway(photos),
        "mean_photo_bytes": np.asarray(np.mean([len(p) for p in photos])),
    }


def photo_set_accuracy(model_repo: Path, photo_set: Path, version: str) -> dict:
    """Accuracy of ``version`` on a prepared photo set (``x`` [N, K, 1, 28, 28], ``y``, ``taken`` [N, K])."""
    spec = load_repository(model_repo)["mnist"]
    backend = OnnxRuntimeBackend(spec.versions[version], spec.input, spec.output, threads=2)
    with np.load(photo_set) as data:
        x, y, taken = data["x"].astype(np.float32), data["y"], data["taken"]
        renderers = [str(name) for name in data["renderers"]]
    inputs, truths = x.reshape(-1, *x.shape[2:]), np.repeat(y, x.shape[1])
    right = np.concatenate(
        [backend.infer_sync(inputs[i : i + BATCH]).argmax(axis=1) for i in range(0, len(inputs), BATCH)]
    )
    right = (right == truths) & taken.ravel()
    backend.close()
    return {
        "accuracy": float(right.mean()),
        "photos": len(truths),
        "refused": int((~taken).sum()),
        "renderers": renderers,
    }


def main(args: argparse.Namespace) -> int:
    with np.load(args.digits) as data:
        digits, labels = data["x"], data["y"]
    versions = args.version or [None]
    runs = []
    inputs = prepared_inputs(args.model_repo, digits, args.seed)  # rendered once for every version
    for version in versions:
        results = evaluate(args.model_repo, digits, labels, seed=args.seed, version=version, inputs=inputs)
        for photo_set in args.photo_set:
            results[f"set:{photo_set.stem}"] = photo_set_accuracy(args.model_repo, photo_set, results["version"])
        runs.append(results)
    print(f"{'input':<34}" + "".join(f"{'v' + r['version']:>10}" for r in runs) + f"   ({len(digits)} digits)")
    for key in ("tensors", "clean_png", "phone_photos"):
        print(f"{key:<34}" + "".join(f"{r[key]:>10.2%}" for r in runs))
    for photo_set in args.photo_set:
        key = f"set:{photo_set.stem}"
        print(f"{key:<34}" + "".join(f"{r[key]['accuracy']:>10.2%}" for r in runs))
    print(json.dumps(runs if len(runs) > 1 else runs[0]))
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("accuracy", help="accuracy on held-out digits: tensors, clean PNGs, phone photos")
    parser.add_argument("--model-repo", type=Path, default=Path("model_repo"))
    parser.add_argument("--digits", type=Path, default=DEFAULT_DIGITS, help="npz with x (uint8 N,28,28) and y")
    parser.add_argument("--version", action="append", help="a version to evaluate (repeatable; default: the latest)")
    parser.add_argument(
        "--photo-set", type=Path, action="append", default=[], help="a prepared photo set (render_photos.py)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=main)
