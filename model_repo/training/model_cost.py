"""CPU cost per item of model versions on ONNX Runtime, side by side: milliseconds of CPU, not of wall.

Runs in the gateway's environment (numpy + onnxruntime)::

    .venv/bin/python model_repo/training/model_cost.py --model mnist --version 1 --version 2 --version 3

Each version's ``model.onnx`` runs on one intra-op thread (as each of the gateway's batch
workers would) on the same random input at each batch size; the figure is the process's CPU
time (``time.process_time``) per item, which stays meaningful on a shared, loaded machine where
wall-clock throughput does not. Versions are measured in turn, round-robin, ``--rounds`` times,
and the median is printed, so a burst of load hits all of them alike. Prints a table and a last
line of JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO_ROOT = Path(__file__).resolve().parents[2]


def open_session(model_file: Path) -> ort.InferenceSession:
    """One intra-op thread, no spinning (spinning threads burn CPU that is not the model's)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])


def cpu_ms_per_item(session: ort.InferenceSession, batch: int, items: int) -> float:
    """CPU milliseconds per item over about ``items`` items at ``batch``."""
    shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape[1:]]
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).random([batch, *shape], np.float32)}
    for _ in range(3):
        session.run(None, feed)
    runs = max(5, items // batch)
    start = time.process_time()
    for _ in range(runs):
        session.run(None, feed)
    return (time.process_time() - start) * 1000.0 / (runs * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repo", type=Path, default=REPO_ROOT / "model_repo")
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--version", action="append", required=True, help="a version (repeatable)")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--items", type=int, default=2000, help="items per measurement (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="round-robin rounds; the median is kept")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    files = {v: args.model_repo / args.model / v / "model.onnx" for v in args.version}
    sessions = {v: open_session(path) for v, path in files.items()}
    samples: dict[str, dict[int, list[float]]] = {v: {b: [] for b in batches} for v in sessions}
    for _ in range(args.rounds):
        for version, session in sessions.items():
            for batch in batches:
                samples[version][batch].append(cpu_ms_per_item(session, batch, args.items))
    result = {
        v: {
            "model_kib": round(files[v].stat().st_size / 1024),
            **{f"batch_{b}_cpu_ms": round(statistics.median(samples[v][b]), 4) for b in batches},
        }
        for v in sessions
    }
    print(f"{'version':<8}{'size':>9}" + "".join(f"{'batch ' + str(b):>12}" for b in batches) + "   (CPU ms per item)")
    for version, figures in result.items():
        cells = "".join(f"{figures[f'batch_{b}_cpu_ms']:>12.3f}" for b in batches)
        print(f"{version:<8}{figures['model_kib']:>6} KiB{cells}")
    print(json.dumps({"model": args.model, "onnxruntime": ort.__version__, "threads": 1, "versions": result}))


if __name__ == "__main__":
    main()
