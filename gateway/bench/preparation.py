"""Digit photos through the gateway's preparation: accuracy, refusals, features and CPU, per photo source.

    PYTHONPATH=. .venv/bin/python -m gateway.bench.preparation --save var/prep-after.npz
    PYTHONPATH=/path/to/old/checkout .venv/bin/python -m gateway.bench.preparation --against var/prep-after.npz

Each held-out digit is photographed by the project's generator (``gateway.bench.photos``) and by
every renderer of ``gateway.bench.renderers`` (the held-out ones are marked), the same bytes for
the same ``--seed``; each photo is decoded and prepared as the gateway does (``prepare_photo``).
Printed per source: accuracy of each MNIST version (a refused photo counts as wrong), refusals,
the mean skew features of the prepared digits, and the CPU p50 of decode + prepare on one thread.
With ``--against`` (tensors saved by another checkout with ``--save``), how many prepared digits
differ and by how much: run once per checkout for a before/after comparison under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from gateway.backends.onnxruntime import OnnxRuntimeBackend
from gateway.bench.photos import digit_photo
from gateway.bench.renderers import HELD_OUT_RENDERERS, RENDERERS, render
from gateway.core.errors import InvalidInput
from gateway.models.repository import load_repository
from gateway.monitoring.features import DIGIT_FEATURES, digit_features
from gateway.preprocess.pipeline import prepare_photo

DEFAULT_DIGITS = Path("tests/data/mnist_heldout_sample.npz")
MAX_PIXELS = 40_000_000


def photo_sets(digits: np.ndarray, seed: int, renderers: tuple[str, ...] = tuple(RENDERERS)) -> dict[str, list[bytes]]:
    """The project generator's photos of ``digits`` and each renderer's, the same bytes for the same seed."""
    rng = np.random.default_rng(seed)
    sets = {"project generator": [digit_photo(d, rng, orientation=int(rng.choice((1, 3, 6, 8)))) for d in digits]}
    for name in renderers:
        rng = np.random.default_rng(seed)
        label = f"{name} (held out)" if name in HELD_OUT_RENDERERS else name
        sets[label] = [render(d / 255.0, name, rng) for d in digits]
    return sets


def prepared(photos: list[bytes], spec) -> tuple[np.ndarray, np.ndarray, float]:
    """Tensors [N, 1, 28, 28] (zeros where refused), taken [N], CPU p50 ms of decode + prepare."""
    tensors = np.zeros((len(photos), *spec.input.dims), np.float32)
    taken = np.zeros(len(photos), bool)
    times = []
    for i, photo in enumerate(photos):
        started = time.thread_time()
        try:
            tensors[i] = prepare_photo(photo, spec, max_pixels=MAX_PIXELS).tensor
            taken[i] = True
        except InvalidInput:
            pass
        times.append(time.thread_time() - started)
    return tensors, taken, statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repo", type=Path, default=Path("model_repo"))
    parser.add_argument("--digits", type=Path, default=DEFAULT_DIGITS, help="npz with x (uint8 N,28,28) and y")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--save", type=Path, help="write the prepared tensors here")
    parser.add_argument("--against", type=Path, help="tensors saved by another checkout: print the differences")
    args = parser.parse_args()
    with np.load(args.digits) as data:
        digits, labels = data["x"], data["y"]
    spec = load_repository(args.model_repo)["mnist"]
    versions = sorted(spec.versions)
    backends = {v: OnnxRuntimeBackend(spec.versions[v], spec.input, spec.output, threads=1) for v in versions}
    other = dict(np.load(args.against)) if args.against else {}
    saved, results = {}, {}
    print(f"load average {os.getloadavg()[0]:.1f}; {len(digits)} digits per source")
    header = f"{'source':<34}" + "".join(f"{'v' + v:>8}" for v in versions) + f"{'refused':>9}{'CPU ms':>8}"
    print(header + "".join(f"{name[:12]:>13}" for name in DIGIT_FEATURES) + ("   changed  mean L1" if other else ""))
    for index, (source, photos) in enumerate(photo_sets(digits, args.seed).items()):
        tensors, taken, cpu_ms = prepared(photos, spec)
        saved[f"x{index}"], saved[f"taken{index}"] = tensors, taken
        row = {"refused": int((~taken).sum()), "cpu_p50_ms": round(cpu_ms, 3)}
        for version, backend in backends.items():
            chunks = [backend.infer_sync(tensors[i : i + 64]).argmax(1) for i in range(0, len(tensors), 64)]
            predicted = np.concatenate(chunks)
            row[f"v{version}"] = float(((predicted == labels) & taken).mean())
        features = digit_features(tensors[taken])
        row["features"] = {name: float(values.mean()) for name, values in features.items()}
        line = f"{source:<34}" + "".join(f"{row['v' + v]:>8.1%}" for v in versions)
        line += f"{row['refused']:>9}{cpu_ms:>8.2f}" + "".join(f"{row['features'][n]:>13.4f}" for n in DIGIT_FEATURES)
        if other:
            both = taken & other[f"taken{index}"]
            difference = np.abs(tensors[both] - other[f"x{index}"][both]).reshape(int(both.sum()), -1)
            row["changed"] = float((difference.max(axis=1) > 1e-4).mean())
            row["mean_l1"] = float(difference.sum(axis=1).mean())
            line += f"{row['changed']:>10.1%}{row['mean_l1']:>9.2f}"
        print(line, flush=True)
        results[source] = row
    for backend in backends.values():
        backend.close()
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.save, **saved)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
