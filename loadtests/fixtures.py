"""What the load test uploads and the gateway it runs against (model repo with a low-priority level)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from gateway.bench.photos import digit_photo
from mobile_client.prepare import prepare_photo
from mobile_client.values import ModelInfo

REPO_ROOT = Path(__file__).resolve().parents[1]
MNIST_INFO = ModelInfo("mnist", "mnist_digit", 1, 28, 28)
HOTDOG_INFO = ModelInfo("hotdog", "imagenet_rgb", 3, 224, 224)


def write_photos(folder: Path, count: int = 32) -> Path:
    """MNIST digits as phone photos, prepared as the mobile client sends them (grey JPEG, short side 224)."""
    folder.mkdir(parents=True, exist_ok=True)
    with np.load(REPO_ROOT / "tests/data/mnist_heldout_sample.npz") as data:
        digits = data["x"][:count]
    rng = np.random.default_rng(42)
    for i, digit in enumerate(digits):
        upload = prepare_photo(digit_photo(digit, rng, orientation=int(rng.choice([1, 6, 8]))), MNIST_INFO)
        (folder / f"digit-{i:03d}.jpg").write_bytes(upload.body)
    return folder


def write_hotdog_photos(folder: Path, count: int = 16) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((REPO_ROOT / "model_repo/training/hotdog_photos").glob("*/*.jpg"))
    for source in sources[:: max(1, len(sources) // count)][:count]:
        (folder / source.name).write_bytes(prepare_photo(source.read_bytes(), HOTDOG_INFO).body)
    return folder


def model_repo_with_priorities(target: Path) -> Path:
    """A copy of model_repo/ (models only) whose mnist queue has two priority levels (bulk work goes in 2)."""
    source = REPO_ROOT / "model_repo"
    for model in ("mnist", "hotdog"):
        shutil.copytree(source / model, target / model)
    config = target / "mnist" / "config.pbtxt"
    text = config.read_text()
    if "priority_levels" not in text:
        levels = "dynamic_batching {\n  priority_levels: 2\n  default_priority_level: 1"
        text = re.sub(r"dynamic_batching\s*\{", levels, text, count=1)
        config.write_text(text)
    return target
