"""Export the MNIST held-out split for the benches (the monitoring is built by build_monitoring.py).

Runs in the gateway's own environment (numpy + the gateway package; no torch):

    .venv/bin/python model_repo/training/baseline_mnist.py

Writes ``model_repo/training/.cache/heldout.npz`` (all 2,000 held-out digits, for
``gateway bench accuracy --digits``). A version's baselines, calibrated thresholds and
temperature come from ``build_monitoring.py --model mnist --version V``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mnist_data
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heldout-out", type=Path, default=mnist_data.DEFAULT_CACHE_DIR / "heldout.npz")
    parser.add_argument("--train-out", type=Path, help="also write the training split here (npz x, y)")
    args = parser.parse_args()
    x, y = mnist_data.load_digits(mnist_data.fetch_package())
    train_x, train_y, test_x, test_y = mnist_data.split(x, y)
    args.heldout_out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.heldout_out, x=test_x, y=test_y)
    print(f"wrote {args.heldout_out} ({len(test_x)} held-out digits)")
    if args.train_out:
        np.savez_compressed(args.train_out, x=train_x, y=train_y)
        print(f"wrote {args.train_out} ({len(train_x)} training digits)")


if __name__ == "__main__":
    main()
