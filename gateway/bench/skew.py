"""`gateway bench skew`: does the skew monitor stay quiet on in-distribution traffic, and how fast
does it flag shifted traffic? Both models, both input surfaces, in process, with the version's own
baselines, calibrated thresholds and temperature, and the gateway's own preprocessing and features.

In-distribution photo windows come from sources the baselines were not built with: MNIST digits
photographed by the held-out renderers and by the project's older generator
(``gateway.bench.photos``); hot dog photos uploaded in the held-out ways of
``gateway.bench.hotdog_uploads`` (and, for information, in the reference's own ways, drawn anew).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from gateway.bench.hotdog_uploads import HELD_OUT_WAYS, TRAINING_WAYS, one_way_each
from gateway.bench.photos import digit_photo
from gateway.bench.renderers import HELD_OUT_RENDERERS, render
from gateway.bench.skew_crossfit import crossfit_false_alarms
from gateway.config import SkewSettings
from gateway.models.repository import ModelSpec, load_repository
from gateway.monitoring.baseline import baseline_path, read_baseline
from gateway.monitoring.features import digit_features
from gateway.monitoring.null_calibration import DEFAULT_TRIALS
from gateway.monitoring.reference import OnnxModel, Reference, photo_reference
from gateway.monitoring.skew import SkewThresholds, compute_skew
from gateway.monitoring.skew_surfaces import estimate_trust
from gateway.monitoring.temperature import estimated_accuracy, read_temperatures

DigitShift = Callable[[np.ndarray], np.ndarray]
"""uint8 28 x 28 digit -> shifted digit."""
PhotoShift = Callable[[Image.Image], Image.Image]


def _per_pixel(transform: Callable[[Image.Image], Image.Image]) -> DigitShift:
    return lambda d: np.asarray(transform(Image.fromarray(np.asarray(d, np.uint8))), dtype=np.uint8)


DIGIT_SHIFTS: dict[str, DigitShift] = {
    "inverted colours": lambda d: 255 - d,
    "heavy blur (radius 2)": _per_pixel(lambda im: im.filter(ImageFilter.GaussianBlur(2))),
    "faint ink (x0.6)": lambda d: (d * 0.6).astype(np.uint8),
    "thick strokes (3x3 max filter)": _per_pixel(lambda im: im.filter(ImageFilter.MaxFilter(3))),
    "rotated 35 degrees": _per_pixel(lambda im: im.rotate(35, resample=Image.Resampling.BILINEAR)),
}


def _colour_cast(image: Image.Image) -> Image.Image:
    """A warm white balance: red up a quarter, blue down 30%."""
    pixels = np.asarray(image, np.float32) * np.array([1.25, 1.0, 0.7], np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


PHOTO_SHIFTS: dict[str, PhotoShift] = {
    "colour cast (warm white balance)": _colour_cast,
    "black-and-white photos": lambda im: ImageOps.grayscale(im).convert("RGB"),
}


@dataclass
class Pool:
    """Records of one kind of traffic (as the prediction log writes them), and its accuracy."""

    records: list[dict]
    accuracy: float
    estimated: float | None
    refused: int = 0


def pool_of(reference: Reference, probabilities: np.ndarray, spec: ModelSpec, temperature) -> Pool:
    """Records with the features and predicted labels the log would hold for these inputs."""
    labels = reference.truth
    features = reference.features(spec.preprocessing)
    predicted = probabilities.argmax(axis=1)
    records = [
        {"features": {name: float(values[i]) for name, values in features.items()}, "label": spec.labels[predicted[i]]}
        for i in range(len(predicted))
    ]
    estimate = None if temperature is None else estimated_accuracy(probabilities, temperature)
    return Pool(records, float((predicted == labels).mean()), estimate, reference.refused)


def false_alarm_rate(baseline: dict, pool: list[dict], window: int, trials: int, thresholds, rng) -> float:
    """Share of random windows of in-distribution records that alarm.

    Each window is drawn without replacement: a window drawn with replacement from a pool
    smaller than a few windows repeats items and carries the pool's own sampling error
    many times over, which no live window does.
    """
    if len(pool) < window:
        raise ValueError(f"{len(pool)} in-distribution records cannot fill windows of {window}: pass more --digits")
    alarms = sum(
        compute_skew(baseline, [pool[i] for i in rng.choice(len(pool), window, replace=False)], thresholds)["alarm"]
        for _ in range(trials)
    )
    return alarms / trials


def requests_until_flagged(baseline: dict, clean: list[dict], shifted: list[dict], window: int, thresholds, step: int):
    """Shifted requests arriving after a window of clean ones: how many until the window alarms (None: never)."""
    for n in range(step, len(shifted) + 1, step):
        live = (clean + shifted[:n])[-window:]
        if compute_skew(baseline, live, thresholds)["alarm"]:
            return n
    return None


def _thresholds(settings: SkewSettings) -> SkewThresholds:
    return SkewThresholds(settings.psi_threshold, settings.labels_threshold, settings.min_window, settings.per_feature)


def _tensors(digits: np.ndarray) -> np.ndarray:
    return (digits / 255.0).astype(np.float32)[:, np.newaxis]


PHOTO_CODE = ("gateway/preprocess", "gateway/bench/renderers.py", "gateway/bench/photos.py")
"""What turns digits into prepared photos: cached photo pools are rebuilt when any of it changes."""


def _photo_cache_key(digits: np.ndarray, seed: int, older: bool) -> str:
    digest = hashlib.sha256(digits.tobytes())
    for root in PHOTO_CODE:
        for path in sorted(Path(root).rglob("*.py")) if Path(root).is_dir() else [Path(root)]:
            digest.update(path.read_bytes())
    return f"bench-photos-{'older' if older else 'held-out'}-{seed}-{digest.hexdigest()[:16]}.npz"


def _digit_photos(
    digits: np.ndarray, labels: np.ndarray, spec: ModelSpec, seed: int, older: bool = False, cache: Path | None = None
) -> Reference:
    """Digits photographed by the held-out renderers in turn (or by the older generator), then prepared.

    Kept in ``cache`` (minutes of CPU), keyed by the digits and the code that makes and prepares photos.
    """
    path = None if cache is None else cache / _photo_cache_key(digits, seed, older)
    if path is not None and path.is_file():
        return Reference.load(path)
    rng = np.random.default_rng(seed)
    if older:
        photos = [digit_photo(d, rng, orientation=int(rng.choice([1, 6, 8]))) for d in digits]
    else:
        photos = [render(d / 255.0, HELD_OUT_RENDERERS[i % 2], rng) for i, d in enumerate(digits)]
    reference = photo_reference(photos, labels, np.zeros(len(labels)), spec)
    if path is not None:
        reference.save(path)
    return reference


def _measure_surface(name, baseline, pools, shifted, window, args, thresholds, rng) -> dict:
    """False alarms on each in-distribution pool; requests until flagged for each shifted pool."""
    result: dict = {"window": window, "false_alarm_rate": {}, "flagged_after": {}, "accuracy": {}}
    for pool_name, pool in pools.items():
        rate = false_alarm_rate(baseline, pool.records, window, args.trials, thresholds, rng)
        result["false_alarm_rate"][pool_name] = rate
        result["accuracy"][pool_name] = {"measured": round(pool.accuracy, 4), "estimated": _round(pool.estimated)}
        print(f"  {name:<7}{pool_name:<46}{'false alarms':>14} {rate:6.1%}   {_accuracy_text(pool)}")
    first = next(iter(pools.values())).records
    start = [first[i] for i in rng.choice(len(first), window, replace=False)]
    for shift_name, pool in shifted.items():
        order = rng.permutation(len(pool.records))
        flagged = requests_until_flagged(
            baseline, start, [pool.records[i] for i in order], window, thresholds, args.step
        )
        after = compute_skew(baseline, (start + pool.records)[-window:], thresholds)
        trusted = estimate_trust(after, pool.estimated)[0]
        result["flagged_after"][shift_name] = flagged
        result["accuracy"][shift_name] = {
            "measured": round(pool.accuracy, 4),
            "estimated": _round(pool.estimated),
            "estimate_trusted": trusted,
        }
        text = "never (within the set)" if flagged is None else f"after {flagged}"
        print(
            f"  {name:<7}{shift_name:<46}{'flagged':>14} {text:<12} {_accuracy_text(pool)}"
            f" ({'trusted' if trusted else 'marked untrusted'})"
        )
    return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _accuracy_text(pool: Pool) -> str:
    estimate = "n/a" if pool.estimated is None else f"{pool.estimated:.1%}"
    return f"accuracy {pool.accuracy:.1%}, estimated {estimate}" + (
        f" ({pool.refused} refused)" if pool.refused else ""
    )


def bench_mnist(args: argparse.Namespace, spec: ModelSpec, version_dir: Path, window: int, thresholds) -> dict:
    with np.load(args.digits) as data:
        digits, labels = data["x"], data["y"]
    model = OnnxModel(version_dir / "model.onnx")
    temperatures = read_temperatures(version_dir / "calibration.json")
    rng = np.random.default_rng(0)

    def pool(reference: Reference, surface: str) -> Pool:
        return pool_of(reference, model.probabilities(reference.tensors), spec, temperatures.get(surface))

    def tensor_pool(moved: np.ndarray) -> Pool:
        return pool(Reference(_tensors(moved), None, labels, np.zeros(len(labels))), "tensor")

    shifted_count = min(len(digits), args.shifted)
    results = {}
    for surface in args.surfaces:
        baseline = read_baseline(baseline_path(version_dir, surface))
        if surface == "tensor":
            pools = {"held-out digits as tensors": tensor_pool(digits)}
            shifted = {name: tensor_pool(np.stack([shift(d) for d in digits])) for name, shift in DIGIT_SHIFTS.items()}
            if args.crossfit:
                results["tensor_crossfit"] = _crossfit(args, spec, model, baseline, window, thresholds)
        else:
            pools = {
                f"photos by held-out renderers ({', '.join(HELD_OUT_RENDERERS)})": pool(
                    _digit_photos(digits, labels, spec, 1, cache=args.digits.parent), "photo"
                ),
                "photos by the older generator (bench/photos.py)": pool(
                    _digit_photos(digits, labels, spec, 2, older=True, cache=args.digits.parent), "photo"
                ),
            }
            few, few_labels, cache = digits[:shifted_count], labels[:shifted_count], args.digits.parent
            moved = {name: np.stack([shift(d) for d in few]) for name, shift in DIGIT_SHIFTS.items()}
            shifted = {
                name: pool(_digit_photos(moved[name], few_labels, spec, 10 + n, cache=cache), "photo")
                for n, name in enumerate(DIGIT_SHIFTS)
            }
        results[surface] = _measure_surface(surface, baseline, pools, shifted, window, args, thresholds, rng)
    return results


def _crossfit(args, spec: ModelSpec, model: OnnxModel, baseline: dict, window: int, thresholds) -> dict:
    """False alarms of the calibration procedure on fresh baselines and disjoint windows (``skew_crossfit``)."""
    if not args.all_digits.is_file():
        print(f"  tensor cross-fitted false alarms: skipped, {args.all_digits} missing (build_monitoring.py writes it)")
        return {}
    with np.load(args.all_digits) as data:
        tensors = _tensors(data["x"])
    predicted = model.probabilities(tensors).argmax(axis=1)
    result = crossfit_false_alarms(
        digit_features(tensors),
        predicted,
        list(spec.labels),
        reference_size=baseline["items"],
        window=window,
        replications=args.crossfit,
        trials=args.crossfit_trials,
        false_alarm_rate=baseline["thresholds"]["false_alarm_rate"],
        thresholds=thresholds,
    )
    low, high = result.interval()
    name = f"cross-fitted: {args.crossfit} random baselines of {baseline['items']} of all {len(predicted)} digits"
    print(
        f"  tensor {name:<46}{'false alarms':>14} {result.rate:6.1%}   "
        f"on {result.windows} disjoint windows, 95% interval {low:.1%}-{high:.1%}"
    )
    return {"false_alarm_rate": result.rate, "windows": result.windows, "interval": [round(low, 4), round(high, 4)]}


def _hotdog_pools(args, spec: ModelSpec, version_dir: Path) -> tuple[dict[str, dict[str, Pool]], dict[str, list]]:
    """Per surface, the pools of records: draws of the uploads in held-out ways and in the reference's
    own ways, and the shifted photos (held-out ways); and which draws are which."""
    folder = Path(args.hotdog_photos)
    with (folder / "labels.csv").open() as rows:
        table = list(csv.DictReader(rows))
    photos = [(folder / row["path"]).read_bytes() for row in table]
    labels = np.array([spec.labels.index(row["label"]) for row in table])
    model = OnnxModel(version_dir / "model.onnx")
    temperatures = read_temperatures(version_dir / "calibration.json")
    rng = np.random.default_rng(0)
    # Each draw sends every photo once, in one of the ways picked at random, each made anew
    # (crop, scale, tone, encoder): all windows of one draw share that draw's luck (347 photos, windows of 200).
    draws = {
        "held-out": [f"uploads in held-out ways, draw {k + 1}" for k in range(args.hotdog_draws)],
        "reference": [f"uploads in the reference's ways, draw {k + 1}" for k in range(args.hotdog_reference_draws)],
    }
    kinds = {
        **{name: (HELD_OUT_WAYS, None) for name in draws["held-out"]},
        **{name: (TRAINING_WAYS, None) for name in draws["reference"]},
        **{name: (HELD_OUT_WAYS, shift) for name, shift in PHOTO_SHIFTS.items()},
    }
    pools: dict[str, dict[str, Pool]] = {"tensor": {}, "photo": {}}
    for name, (ways, shift) in kinds.items():
        uploads, groups = one_way_each(photos, ways, rng, shift)
        photo = photo_reference(uploads, labels, groups, spec)
        tensor = Reference(photo.tensors, None, photo.truth, photo.groups, photo.refused)
        probabilities = model.probabilities(photo.tensors)
        for surface, reference in (("photo", photo), ("tensor", tensor)):
            pools[surface][name] = pool_of(reference, probabilities, spec, temperatures.get(surface))
    return pools, draws


def bench_hotdog(args: argparse.Namespace, spec: ModelSpec, version_dir: Path, window: int, thresholds) -> dict:
    pools, draws = _hotdog_pools(args, spec, version_dir)
    rng = np.random.default_rng(1)
    results = {}
    for surface in args.surfaces:
        baseline = read_baseline(baseline_path(version_dir, surface))
        in_distribution = {name: pools[surface][name] for name in (*draws["held-out"], *draws["reference"])}
        shifted = {name: pools[surface][name] for name in PHOTO_SHIFTS}
        result = _measure_surface(surface, baseline, in_distribution, shifted, window, args, thresholds, rng)
        for kind, names in draws.items():
            if not names:
                continue
            rates = [result["false_alarm_rate"][name] for name in names]
            mean = f"uploads in {'held-out' if kind == 'held-out' else 'reference'} ways, mean of {len(rates)} draws"
            result["false_alarm_rate"][mean] = float(np.mean(rates))
            spread = f"(draws: {min(rates):.1%}-{max(rates):.1%})"
            print(f"  {surface:<7}{mean:<46}{'false alarms':>14} {np.mean(rates):6.1%}   {spread}")
        results[surface] = result
    return results


def main(args: argparse.Namespace) -> int:
    repository = load_repository(args.model_repo)
    settings = SkewSettings()
    thresholds = _thresholds(settings)
    results: dict[str, object] = {}
    for name in ("mnist", "hotdog") if args.model == "all" else (args.model,):
        spec = repository[name]
        version = args.version or spec.latest_version
        if version not in spec.versions:
            raise SystemExit(f"{name} has no version {version!r} (loaded: {', '.join(sorted(spec.versions))})")
        version_dir = spec.versions[version].parent
        window = (args.window or settings.window) if name == "mnist" else args.hotdog_window
        baseline = read_baseline(baseline_path(version_dir, "photo"))
        rate = baseline.get("thresholds", {}).get("false_alarm_rate")
        print(
            f"{name} v{version}: window {window}, thresholds calibrated for {rate:.1%} false alarms per window, "
            f"{args.trials} random windows per false-alarm figure, checked every {args.step} shifted requests"
        )
        bench = bench_mnist if name == "mnist" else bench_hotdog
        results[name] = {"version": version, **bench(args, spec, version_dir, window, thresholds)}
    print(json.dumps(results))
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("skew", help="false alarms and detection speed of the skew monitor")
    parser.add_argument("--model", choices=("mnist", "hotdog", "all"), default="all")
    parser.add_argument("--model-repo", type=Path, default=Path("model_repo"))
    parser.add_argument("--version", help="the version to measure (default: each model's latest)")
    parser.add_argument(
        "--digits",
        type=Path,
        default=Path("model_repo/training/.cache/heldout-first-half.npz"),
        help="held-out digits, at least a window's worth (build_monitoring.py writes the default)",
    )
    parser.add_argument(
        "--all-digits",
        type=Path,
        default=Path("model_repo/training/.cache/mnist-all.npz"),
        help="every MNIST digit there is, for the cross-fitted false alarms (build_monitoring.py writes it)",
    )
    parser.add_argument("--crossfit", type=int, default=100, help="cross-fit replications (0: skip)")
    parser.add_argument(
        "--crossfit-trials", type=int, default=DEFAULT_TRIALS, help="bootstrap draws per cross-fit baseline"
    )
    parser.add_argument("--hotdog-photos", type=Path, default=Path("model_repo/training/hotdog_photos"))
    parser.add_argument("--window", type=int, help="MNIST window (default: skew.window)")
    parser.add_argument("--hotdog-window", type=int, default=200, help="hot dog window (its photo set has 347)")
    parser.add_argument(
        "--hotdog-draws", type=int, default=5, help="hot dog: independent draws of the uploads in held-out ways"
    )
    parser.add_argument(
        "--hotdog-reference-draws",
        type=int,
        default=2,
        help="hot dog: draws of the uploads in the reference's own ways (for information)",
    )
    parser.add_argument(
        "--surfaces", type=lambda text: tuple(text.split(",")), default=("tensor", "photo"), help="e.g. tensor"
    )
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--step", type=int, default=10, help="check the window every STEP shifted requests")
    parser.add_argument("--shifted", type=int, default=300, help="MNIST: shifted digits photographed per shift")
    parser.set_defaults(handler=main)
