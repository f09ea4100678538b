"""Model throughput on ONNX Runtime execution providers, side by side, at several batch sizes.

`gateway bench model --model-file model_repo/hotdog/1/model.onnx --providers cpu:2,cuda --batches 1,8,32,64`

Each configuration runs the same ONNX file on the same random input (the model's cost does not
depend on pixel values) through ``session.run`` with numpy arrays, as the gateway's backend does,
so GPU figures include the copies to and from the device. Prints images/s and the median batch
time per (provider, batch), the ratio of each configuration to the first, and a last line of JSON.

Needs only numpy and onnxruntime (or onnxruntime-gpu for ``cuda``), so it runs on a GPU machine
without the rest of the gateway installed: ``python -m gateway.bench.onnx_throughput ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort


@dataclass(frozen=True)
class ProviderConfig:
    """``cpu:THREADS`` or ``cuda``."""

    name: str
    threads: int

    @classmethod
    def parse(cls, text: str) -> ProviderConfig:
        kind, _, threads = text.partition(":")
        if kind not in ("cpu", "cuda"):
            raise argparse.ArgumentTypeError(f"provider {text!r}: expected cpu:THREADS or cuda")
        return cls(kind, int(threads) if threads else (os.cpu_count() or 1))

    @property
    def label(self) -> str:
        return f"cpu:{self.threads}" if self.name == "cpu" else "cuda"


def open_session(model_file: Path, config: ProviderConfig) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if config.name == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(model_file), options, providers=providers)
    if config.name == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise SystemExit(f"CUDA was asked for but the session runs on {session.get_providers()} (CUDA libraries?)")
    return session


def measure(session: ort.InferenceSession, batch: int, seconds: float, warmup: int) -> dict[str, float]:
    item_shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape[1:]]
    inputs = {session.get_inputs()[0].name: np.random.default_rng(0).random([batch, *item_shape], np.float32)}
    for _ in range(warmup):
        session.run(None, inputs)
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        session.run(None, inputs)
        times.append(time.perf_counter() - start)
    total = float(np.sum(times))
    return {
        "images_per_s": round(batch * len(times) / total, 1),
        "batch_p50_ms": round(float(np.median(times)) * 1000, 3),
        "runs": len(times),
    }


def run(model_file: Path, configs: list[ProviderConfig], batches: list[int], seconds: float) -> dict:
    results: dict[str, dict[int, dict[str, float]]] = {}
    for config in configs:
        session = open_session(model_file, config)
        warmup = 20 if config.name == "cuda" else 2
        results[config.label] = {b: measure(session, b, seconds, warmup) for b in batches}
        for b, figures in results[config.label].items():
            print(
                f"{config.label:>8} batch {b:>3}: {figures['images_per_s']:>9.1f} images/s, "
                f"batch p50 {figures['batch_p50_ms']:>8.2f} ms ({figures['runs']} runs)",
                flush=True,
            )
    first = configs[0].label
    ratios = {
        label: {b: round(per_batch[b]["images_per_s"] / results[first][b]["images_per_s"], 2) for b in batches}
        for label, per_batch in results.items()
        if label != first
    }
    for label, per_batch in ratios.items():
        print(f"{label} / {first}: " + ", ".join(f"batch {b}: {r}x" for b, r in per_batch.items()))
    return {"model": str(model_file), "onnxruntime": ort.__version__, "results": results, "ratios_to_first": ratios}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-file", type=Path, required=True)
    parser.add_argument(
        "--providers", default="cpu", help="comma-separated: cpu:THREADS, cuda (first is the reference)"
    )
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per (provider, batch)")


def _run_from_args(args: argparse.Namespace) -> None:
    configs = [ProviderConfig.parse(p) for p in args.providers.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    print(json.dumps(run(args.model_file, configs, batches, args.seconds)))


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("model", help="a model's images/s on ONNX Runtime providers (cpu:N, cuda)")
    _add_arguments(parser)
    parser.set_defaults(handler=_run_from_args)


def main(argv: list[str] | None = None) -> None:
    """Standalone entry (a GPU machine without the gateway's other dependencies)."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.bench.onnx_throughput", description=__doc__.splitlines()[0]
    )
    _add_arguments(parser)
    _run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    main()
