"""Build what a model version needs to be monitored, and write it into ``model_repo/<model>/<version>/``.

    .venv/bin/python model_repo/training/build_monitoring.py                     # every version of both models
    .venv/bin/python model_repo/training/build_monitoring.py --model mnist --version 2

Writes, from the version's own ``model.onnx`` and the gateway's own preprocessing:

- ``baseline.json``: the tensor surface (inputs clients prepare themselves: KServe, TF Serving);
- ``baseline_photo.json``: the photo surface (photos as phones upload them, after the
  gateway's decoding and preprocessing). MNIST: training digits photographed by the
  training renderers of ``gateway.bench.renderers`` (never the held-out ones). Hot dog:
  each labelled photo in each of the training ways of ``gateway.bench.hotdog_uploads``
  (never the held-out ones): as uploaded, as the mobile client sends it, as a phone stores
  it, edited (exposure, contrast) as PNG, through a messenger as WebP, from an editor as
  JPEG 4:4:4. The tensor baseline holds the same items, as tensors;
- in both, thresholds calibrated on the null per window size at ``--false-alarm-rate``
  per window for the whole model (``gateway.monitoring.null_calibration``);
- ``calibration.json``: a temperature per surface, fitted on a held-out split, for the
  accuracy estimated without labels, and how well it did on another held-out part.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import mnist_data  # noqa: E402

from gateway.bench.hotdog_uploads import TRAINING_WAYS, every_way  # noqa: E402
from gateway.bench.renderers import HELD_OUT_RENDERERS, TRAINING_RENDERERS, render  # noqa: E402
from gateway.models.repository import ModelSpec, load_model_spec  # noqa: E402
from gateway.monitoring.baseline import baseline_path, write_baseline  # noqa: E402
from gateway.monitoring.null_calibration import DEFAULT_TRIALS  # noqa: E402
from gateway.monitoring.reference import OnnxModel, Reference, photo_reference, surface_baseline  # noqa: E402
from gateway.monitoring.temperature import estimated_accuracy, fit_temperature, write_calibration  # noqa: E402

HOTDOG_PHOTOS = ROOT / "model_repo" / "training" / "hotdog_photos"
EVALUATION_DIGITS = mnist_data.DEFAULT_CACHE_DIR / "heldout-first-half.npz"
ALL_DIGITS = mnist_data.DEFAULT_CACHE_DIR / "mnist-all.npz"
MODELS = ("mnist", "hotdog")


def rendered(digits: np.ndarray, labels: np.ndarray, names: tuple[str, ...], seed: int) -> tuple[list, list, list]:
    """Each digit photographed by one of ``names`` in turn: (photos, truth, renderer index)."""
    rng = np.random.default_rng(seed)
    photos = [render(d / 255.0, names[i % len(names)], rng) for i, d in enumerate(digits)]
    return photos, labels.tolist(), [i % len(names) for i in range(len(digits))]


def _code_digest() -> str:
    """A digest of the code that turns digits into model inputs: the renderers and the gateway's preprocessing."""
    digest = hashlib.sha256()
    for path in sorted([*(ROOT / "gateway" / "preprocess").glob("*.py"), ROOT / "gateway" / "bench" / "renderers.py"]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def cached_photo_reference(
    name: str, digits: np.ndarray, labels: np.ndarray, names: tuple[str, ...], seed: int, spec: ModelSpec
) -> Reference:
    """Digits photographed and prepared (minutes of CPU), kept in the cache until renderers or preprocessing change."""
    path = mnist_data.DEFAULT_CACHE_DIR / f"photos-{name}-{len(digits)}-{seed}-{_code_digest()}.npz"
    if path.is_file():
        return Reference.load(path)
    reference = photo_reference(*rendered(digits, labels, names, seed), spec)
    reference.save(path)
    return reference


def mnist_references(spec: ModelSpec, per_renderer: int) -> dict[str, tuple[Reference, str]]:
    x, y = mnist_data.load_digits(mnist_data.fetch_package())
    train_x, train_y, _, _ = mnist_data.split(x, y)
    count = min(len(train_x), per_renderer * len(TRAINING_RENDERERS))
    photos = cached_photo_reference("train", train_x[:count], train_y[:count], TRAINING_RENDERERS, 17, spec)
    tensors = Reference((train_x / 255.0).astype(np.float32)[:, np.newaxis], None, train_y, np.zeros(len(train_y)))
    split = f"npm:{mnist_data.PACKAGE_SPEC} training split (seed {mnist_data.SPLIT_SEED})"
    return {
        "tensor": (tensors, f"{split}: {len(train_x)} digits as tensors"),
        "photo": (
            photos,
            f"{split}: {len(photos.truth)} digits photographed by {', '.join(TRAINING_RENDERERS)} "
            f"({photos.refused} refused by the preprocessing), through the gateway's preprocessing",
        ),
    }


def mnist_calibration_sets(spec: ModelSpec) -> dict[str, tuple[Reference | None, Reference]]:
    """Per surface: (fit set, check set) from the held-out split's two halves; photos by other renderers.

    The temperature is fitted on the second half, so the first half (which holds the committed
    sample ``tests/data/mnist_heldout_sample.npz``) stays out of it for the tests and benches.
    """
    x, y = mnist_data.load_digits(mnist_data.fetch_package())
    _, _, test_x, test_y = mnist_data.split(x, y)
    half = len(test_x) // 2
    check_x, check_y, fit_x, fit_y = test_x[:half], test_y[:half], test_x[half:], test_y[half:]

    def as_tensors(digits: np.ndarray, labels: np.ndarray) -> Reference:
        return Reference((digits / 255.0).astype(np.float32)[:, np.newaxis], None, labels, np.zeros(len(labels)))

    return {
        "tensor": (as_tensors(fit_x, fit_y), as_tensors(check_x, check_y)),
        "photo": (
            cached_photo_reference("heldout-second-half", fit_x, fit_y, TRAINING_RENDERERS, 18, spec),
            cached_photo_reference("heldout-first-half", check_x, check_y, HELD_OUT_RENDERERS, 19, spec),
        ),
    }


def write_evaluation_digits(path: Path, everything: Path = ALL_DIGITS) -> None:
    """The held-out digits nothing of the monitoring was fitted on (the first half), for the benches; and
    every digit there is, for the bench's cross-fitted false alarms (``gateway.bench.skew_crossfit``)."""
    x, y = mnist_data.load_digits(mnist_data.fetch_package())
    _, _, test_x, test_y = mnist_data.split(x, y)
    half = len(test_x) // 2
    np.savez_compressed(path, x=test_x[:half], y=test_y[:half])
    np.savez_compressed(everything, x=x, y=y)


def hotdog_references(spec: ModelSpec) -> tuple[dict[str, tuple[Reference, str]], dict]:
    with (HOTDOG_PHOTOS / "labels.csv").open() as rows:
        table = list(csv.DictReader(rows))
    paths = [HOTDOG_PHOTOS / row["path"] for row in table]
    truth = [spec.labels.index(row["label"]) for row in table]
    uploads, kinds, sources = every_way([path.read_bytes() for path in paths], TRAINING_WAYS, seed=17)
    photo = photo_reference(uploads, np.asarray(truth)[sources], kinds, spec, sources=sources)
    # Tensors prepared by a client come from photos that reached it in the same ways (the sizes aside).
    tensors = Reference(photo.tensors, None, photo.truth, photo.groups, photo.refused, photo.sources)
    ways = ", ".join(TRAINING_WAYS)
    source = (
        f"{HOTDOG_PHOTOS.relative_to(ROOT)} ({len(paths)} labelled photos), each {len(TRAINING_WAYS)} ways ({ways})"
    )
    references = {
        "tensor": (tensors, f"{source}, prepared by the gateway's preprocessing, as tensors"),
        "photo": (photo, f"{source}, through the gateway's decoding and preprocessing"),
    }
    # No split of these photos is held out (the served head was fitted on all of them): a temperature
    # fitted on them would learn that the model is always right. None: T = 1, checked in-sample.
    calibration = {"tensor": (None, tensors), "photo": (None, photo)}
    return references, calibration


def fitted_on(model: str, surface: str) -> str:
    if model == "hotdog":
        return (
            "not fitted (T = 1): the head was fitted on every labelled photo, so no held-out split exists; "
            "checked on those same photos"
        )
    if surface == "photo":
        return (
            f"second half of the held-out split photographed by {', '.join(TRAINING_RENDERERS)}; "
            f"checked on the first half photographed by {', '.join(HELD_OUT_RENDERERS)}"
        )
    return "second half of the held-out split as tensors; checked on the first half"


def temperature_entry(model: OnnxModel, fit: Reference | None, check: Reference, fitted_on: str) -> dict:
    """The fitted temperature (1.0 when there is nothing to fit it on) and how its estimate did on ``check``."""
    check_p = model.probabilities(check.tensors)
    temperature = 1.0 if fit is None else fit_temperature(model.probabilities(fit.tensors), fit.truth)
    return {
        "temperature": round(temperature, 4),
        "fitted_on": fitted_on,
        "fit_items": 0 if fit is None else len(fit.truth),
        "check_items": len(check.truth),
        "check_accuracy": round(float((check_p.argmax(axis=1) == check.truth).mean()), 4),
        "check_estimated_accuracy": round(estimated_accuracy(check_p, temperature), 4),
        "check_estimated_accuracy_uncalibrated": round(estimated_accuracy(check_p, 1.0), 4),
    }


def build_version(model_name: str, version_dir: Path, args: argparse.Namespace) -> None:
    """Baselines with calibrated thresholds, and the temperature, of one version (any version directory)."""
    spec = load_model_spec(version_dir.parent)
    model = OnnxModel(version_dir / "model.onnx")
    if model_name == "mnist":
        references = mnist_references(spec, args.per_renderer)
        calibration_sets = mnist_calibration_sets(spec)
    else:
        references, calibration_sets = hotdog_references(spec)
    for surface, (reference, source) in references.items():
        predicted = model.probabilities(reference.tensors).argmax(axis=1)
        baseline = surface_baseline(
            reference, predicted, spec, surface, source, false_alarm_rate=args.false_alarm_rate, trials=args.trials
        )
        write_baseline(baseline_path(version_dir, surface), baseline)
        print(f"wrote {baseline_path(version_dir, surface)}: {source}")
    calibration = {
        "surfaces": {
            surface: temperature_entry(model, fit, check, fitted_on(model_name, surface))
            for surface, (fit, check) in calibration_sets.items()
        }
    }
    write_calibration(version_dir / "calibration.json", calibration)
    print(f"wrote {version_dir / 'calibration.json'}: {calibration}")


def version_dirs(model_repo: Path, model_name: str, version: str | None) -> list[Path]:
    """The version directories to build: the one asked for, or every one holding a model.onnx."""
    if version is not None:
        return [model_repo / model_name / version]
    found = [d for d in (model_repo / model_name).iterdir() if d.is_dir() and (d / "model.onnx").is_file()]
    return sorted(found, key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=(*MODELS, "all"), default="all")
    parser.add_argument("--version", help="one version directory (default: every version of the model)")
    parser.add_argument("--model-repo", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--false-alarm-rate", type=float, default=0.01, help="per window, whole model (default 1%%)")
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help="bootstrap draws per window size")
    parser.add_argument("--per-renderer", type=int, default=1000, help="MNIST: training digits per renderer")
    args = parser.parse_args()
    if args.version is not None and args.model == "all":
        parser.error("--version needs --model")
    for model_name in MODELS if args.model == "all" else (args.model,):
        for version_dir in version_dirs(args.model_repo, model_name, args.version):
            build_version(model_name, version_dir, args)
        if model_name == "mnist":
            write_evaluation_digits(EVALUATION_DIGITS)
            print(f"wrote {EVALUATION_DIGITS} and {ALL_DIGITS}, for gateway bench skew")


if __name__ == "__main__":
    main()
