"""Every accuracy figure of MNIST versions side by side, and their cost, in one command.

    .venv/bin/python model_repo/training/evaluate_mnist.py --version 1 --version 2 --version 3

(``make evaluate-mnist``.) On the 2,000 held-out digits (never trained on):

1. ``gateway bench accuracy``: tensors, clean PNGs through the gateway, and photos from the
   project's own generator (``gateway.bench.photos``), plus
2. one photo set per renderer of ``HELD_OUT_RENDERERS`` (never trained on), rendered and
   prepared by the gateway's current preprocessing with ``render_photos.py``. The sets are
   cached under ``model_repo/training/.cache/`` by a digest of the renderers' and the
   preprocessing's code, so after a change to either they are made again (minutes of CPU);
3. ``model_cost.py``: CPU milliseconds per item on one thread at batch 1 and 32.

Runs in the gateway's environment; prints each tool's table and JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRAINING = ROOT / "model_repo" / "training"
CACHE = TRAINING / ".cache"
sys.path.insert(0, str(ROOT))

from gateway.bench.renderers import HELD_OUT_RENDERERS  # noqa: E402


def code_digest() -> str:
    """What makes a prepared photo set: the renderers and the gateway's preprocessing (as build_monitoring.py)."""
    digest = hashlib.sha256()
    for path in sorted([*(ROOT / "gateway" / "preprocess").glob("*.py"), ROOT / "gateway" / "bench" / "renderers.py"]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def run(*command: str | Path) -> None:
    """Run a step with this interpreter's environment and the repository on the path; stop on failure."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    print("+ " + " ".join(str(part) for part in command), flush=True)
    subprocess.run([str(part) for part in command], check=True, cwd=ROOT, env=env)


def held_out_sets(workers: int) -> list[Path]:
    """One prepared photo set per held-out renderer, made now if the cache has none for this code."""
    digest = code_digest()
    sets = []
    for name in HELD_OUT_RENDERERS:
        path = CACHE / f"heldout_{name}-{digest}.npz"
        if not path.is_file():
            script, jobs = TRAINING / "render_photos.py", str(workers)
            run(sys.executable, script, "--split", "heldout", "--renderers", name, "--workers", jobs, "--out", path)
        sets.append(path)
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="append", required=True, help="an MNIST version (repeatable)")
    parser.add_argument("--workers", type=int, default=2, help="processes rendering photo sets (default 2)")
    parser.add_argument("--no-cost", action="store_true", help="skip the CPU cost per item")
    args = parser.parse_args()
    digits = CACHE / "heldout.npz"
    if not digits.is_file():
        run(sys.executable, TRAINING / "baseline_mnist.py")
    photo_sets = [part for path in held_out_sets(args.workers) for part in ("--photo-set", path)]
    versions = [part for version in args.version for part in ("--version", version)]
    run(sys.executable, "-m", "gateway.cli", "bench", "accuracy", "--digits", digits, *versions, *photo_sets)
    if not args.no_cost:
        run(sys.executable, TRAINING / "model_cost.py", *versions)


if __name__ == "__main__":
    main()
