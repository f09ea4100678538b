"""Record the training data's statistics beside the MNIST model version, and export the held-out split.

Runs in the gateway's own environment (numpy + the gateway package; no torch):

    .venv/bin/python model_repo/training/baseline_mnist.py

Writes ``model_repo/mnist/1/baseline.json`` (per-feature histograms of the training inputs,
computed with the same feature functions the gateway applies to live traffic, and the label
distribution) and ``model_repo/training/.cache/heldout.npz`` (all 2,000 held-out digits, for
``gateway bench accuracy --digits``). With ``--extra DIR`` (prediction exports the version was
trained with too), their feedback-labelled inputs join the baseline as they joined the training.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import extra_data
import mnist_data
import numpy as np

from gateway.monitoring.baseline import compute_baseline, write_baseline
from gateway.monitoring.features import digit_features

REPO_ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version-dir", type=Path, default=REPO_ROOT / "model_repo" / "mnist" / "1")
    parser.add_argument("--heldout-out", type=Path, default=mnist_data.DEFAULT_CACHE_DIR / "heldout.npz")
    parser.add_argument("--extra", type=Path, action="append", default=[], help="a prediction export (repeatable)")
    parser.add_argument("--train-out", type=Path, help="also write the training split here (npz x, y)")
    args = parser.parse_args()
    x, y = mnist_data.load_digits(mnist_data.fetch_package())
    train_x, train_y, test_x, test_y = mnist_data.split(x, y)
    labels = (REPO_ROOT / "model_repo" / "mnist" / "labels.txt").read_text().split()
    source = f"npm:{mnist_data.PACKAGE_SPEC} training split ({len(train_x)} digits, split seed {mnist_data.SPLIT_SEED})"
    inputs, targets = train_x.astype(np.float32)[:, np.newaxis] / 255.0, train_y
    if args.extra:
        extra = extra_data.load_exports(args.extra, labels, (1, mnist_data.IMAGE_SIZE, mnist_data.IMAGE_SIZE))
        inputs, targets = np.concatenate([inputs, extra.x]), np.concatenate([targets, extra.y])
        source += f" + {len(extra.y)} feedback-labelled rows of {len(args.extra)} prediction export(s)"
    write_baseline(
        args.version_dir / "baseline.json", compute_baseline(digit_features(inputs), targets, labels, source)
    )
    if args.train_out:
        np.savez_compressed(args.train_out, x=train_x, y=train_y)
    args.heldout_out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.heldout_out, x=test_x, y=test_y)
    print(f"wrote {args.version_dir / 'baseline.json'} and {args.heldout_out} ({len(test_x)} held-out digits)")


if __name__ == "__main__":
    main()
