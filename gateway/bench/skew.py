"""`gateway bench skew`: does the skew monitor stay quiet on in-distribution traffic, and how fast
does it flag shifted traffic? In process, on held-out digits, with the gateway's own features,
baseline and thresholds (no server needed)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from gateway.bench.photos import digit_photo
from gateway.config import SkewSettings
from gateway.models.repository import load_repository
from gateway.monitoring.baseline import read_baseline
from gateway.monitoring.features import digit_features
from gateway.monitoring.skew import SkewThresholds, compute_skew
from gateway.preprocess.pipeline import prepare_photo

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _per_digit(transform: Callable[[Image.Image], Image.Image]) -> Shift:
    def shift(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.stack([np.asarray(transform(Image.fromarray(d)), dtype=np.uint8) for d in digits])

    return shift


SHIFTS: dict[str, Shift] = {
    "inverted colours": lambda d, rng: 255 - d,
    "heavy blur": _per_digit(lambda im: im.filter(ImageFilter.GaussianBlur(2))),
    "rotated 35 degrees": _per_digit(lambda im: im.rotate(35, resample=Image.Resampling.BILINEAR)),
    "faint ink (x0.6)": lambda d, rng: (d * 0.6).astype(np.uint8),
    "thick strokes (other pen)": _per_digit(lambda im: im.filter(ImageFilter.MaxFilter(3))),
}


def records_of(tensors: np.ndarray, labels: np.ndarray) -> list[dict]:
    features = digit_features(tensors)
    return [
        {"features": {name: float(values[i]) for name, values in features.items()}, "label": str(labels[i])}
        for i in range(len(tensors))
    ]


def false_alarm_rate(baseline: dict, pool: list[dict], window: int, trials: int, thresholds, rng) -> float:
    alarms = sum(
        compute_skew(baseline, [pool[i] for i in rng.integers(0, len(pool), window)], thresholds)["alarm"]
        for _ in range(trials)
    )
    return alarms / trials


def requests_until_flagged(baseline: dict, clean: list[dict], shifted: list[dict], window: int, thresholds, step: int):
    """Shifted requests arriving after a window of clean ones: how many until the window alarms."""
    for n in range(step, len(shifted) + 1, step):
        live = (clean + shifted[:n])[-window:]
        if compute_skew(baseline, live, thresholds)["alarm"]:
            return n
    return None


def main(args: argparse.Namespace) -> int:
    with np.load(args.digits) as data:
        digits, labels = data["x"], data["y"]
    spec = load_repository(args.model_repo)["mnist"]
    baseline = read_baseline(spec.versions[spec.latest_version].parent / "baseline.json")
    settings = SkewSettings()
    window = args.window or settings.window
    thresholds = SkewThresholds(
        settings.psi_threshold, settings.labels_threshold, settings.min_window, settings.per_feature
    )
    rng = np.random.default_rng(0)
    clean = records_of((digits / 255.0).astype(np.float32)[:, np.newaxis], labels)
    photo_tensors = np.stack([prepare_photo(digit_photo(d, rng), spec, max_pixels=10**7).tensor for d in digits])
    photos = records_of(photo_tensors, labels)
    print(
        f"{len(digits)} held-out digits from {args.digits}; window {window}, PSI threshold {thresholds.psi}, "
        f"label L-inf threshold {thresholds.labels_linf}, {args.trials} random windows each"
    )
    results: dict[str, object] = {
        "false_alarm_rate_tensors": false_alarm_rate(baseline, clean, window, args.trials, thresholds, rng),
        "false_alarm_rate_photos": false_alarm_rate(baseline, photos, window, args.trials, thresholds, rng),
    }
    print(f"false alarms, held-out digits as tensors: {results['false_alarm_rate_tensors']:.1%}")
    print(
        f"false alarms, held-out digits as phone photos through preprocessing: {results['false_alarm_rate_photos']:.1%}"
    )
    order = rng.permutation(len(digits))
    start = [clean[i] for i in order[:window]]
    flagged = {}
    for name, shift in SHIFTS.items():
        moved = shift(digits[order], rng)
        shifted = records_of((moved / 255.0).astype(np.float32)[:, np.newaxis], labels[order])
        flagged[name] = requests_until_flagged(baseline, start, shifted, window, thresholds, args.step)
        print(
            f"{name:<28} flagged after {flagged[name] if flagged[name] is not None else 'never (within the set)'} "
            "shifted requests"
        )
    results["flagged_after"] = flagged
    print(json.dumps(results))
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("skew", help="false alarms and detection speed of the skew monitor")
    parser.add_argument("--model-repo", type=Path, default=Path("model_repo"))
    parser.add_argument("--digits", type=Path, default=Path("tests/data/mnist_heldout_sample.npz"))
    parser.add_argument("--window", type=int)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--step", type=int, default=10, help="check the window every STEP shifted requests")
    parser.set_defaults(handler=main)
