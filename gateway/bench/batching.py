"""`gateway bench batching`: dynamic batching on versus off, end to end, in one run.

Starts the gateway twice on free loopback ports with mTLS (same process layout; the
only difference is GATEWAY_BATCHING_ENABLED), drives each with N concurrent HTTPS
clients uploading phone-style PNG photos of digits, and scrapes the gateway's own
batch metrics. Then measures the "ceiling": the backend alone, in this process, at the
batch size the batcher formed, with no HTTP, TLS or decoding. The last line printed is
one JSON object for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gateway.backends.onnxruntime import OnnxRuntimeBackend
from gateway.bench.backend_alone import run_alone
from gateway.bench.http_load import Connection
from gateway.bench.load_loops import Window, closed_loop, open_loop
from gateway.bench.photos import digit_photo
from gateway.bench.profile import stage_shares, start_py_spy
from gateway.bench.server_process import start_gateway
from gateway.models.repository import load_repository
from gateway.security.pki import PkiPaths, init_pki
from gateway.security.tls import client_context

DEFAULT_DIGITS = Path("tests/data/mnist_heldout_sample.npz")


@dataclass
class RunResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    mean_batch: float
    mean_execution_ms: float
    answered: int
    """Every answer of the run, warm-up included (for CPU per request)."""
    server_cpu_ms_per_request: float = float("nan")


def make_photos(digits_path: Path, count: int, side: int) -> list[bytes]:
    """PNG photos of held-out digits, about ``side`` pixels on the short side (as a phone app sends them)."""
    with np.load(digits_path) as data:
        digits = data["x"][:count]
    rng = np.random.default_rng(0)
    return [digit_photo(d, rng, min_side=side, fmt="PNG") for d in digits]


def _metric_sum_count(text: str, name: str) -> tuple[float, float]:
    total = sum(float(v) for v in re.findall(rf"^{name}_sum\{{[^}}]*\}} (\S+)$", text, re.M))
    count = sum(float(v) for v in re.findall(rf"^{name}_count\{{[^}}]*\}} (\S+)$", text, re.M))
    return total, count


async def measure(
    base_url: str,
    pki: PkiPaths,
    model: str,
    photos: list[bytes],
    clients: int,
    warmup_s: float,
    duration_s: float,
    rate: float | None = None,
) -> RunResult:
    """Drive the gateway (closed loop with ``clients`` connections, or paced at ``rate``) and scrape /metrics."""
    context = client_context(pki.ca_cert, pki.client_cert("app"), pki.client_key("app"))
    path = f"/api/v1/models/{model}/classify"
    connections = [await Connection.open(base_url, context) for _ in range(clients)]

    async def send(index: int, sequence: int) -> bool:
        status, _ = await connections[index].post(path, photos[sequence % len(photos)], "image/png")
        return status == 200

    now = asyncio.get_running_loop().time()
    window = Window(now + warmup_s, now + warmup_s + duration_s)
    if rate is None:
        await closed_loop(send, clients, window)
    else:
        await open_loop(send, clients, rate, window)
    _, metrics_body = await connections[0].get("/metrics")
    for connection in connections:
        await connection.close()
    metrics = metrics_body.decode()
    batch_sum, batch_count = _metric_sum_count(metrics, "gateway_batch_size")
    exec_sum, exec_count = _metric_sum_count(metrics, "gateway_batch_execution_seconds")
    ordered = np.sort(window.latencies) * 1000 if window.latencies else np.array([float("nan")])
    return RunResult(
        rps=len(window.latencies) / duration_s,
        p50_ms=float(np.percentile(ordered, 50)),
        p99_ms=float(np.percentile(ordered, 99)),
        errors=window.errors,
        mean_batch=batch_sum / batch_count if batch_count else 0.0,
        mean_execution_ms=1000 * exec_sum / exec_count if exec_count else 0.0,
        answered=window.answered,
    )


def run_gateway(
    pki: PkiPaths,
    model_repo: Path,
    batching: bool,
    workload: Callable[[str], Coroutine[None, None, RunResult]],
    profile: tuple[Path, float] | None = None,
) -> RunResult:
    """Run ``workload`` against a fresh gateway; with ``profile`` (output, seconds), py-spy samples it."""
    server = start_gateway(
        ["--pki-dir", str(pki.root), "--model-repo", str(model_repo)],
        env={"GATEWAY_BATCHING_ENABLED": "true" if batching else "false"},
    )
    try:
        cpu_before = server.cpu_seconds()
        spy = start_py_spy(server.process.pid, profile[1], profile[0]) if profile else None
        result = asyncio.run(workload(server.base_url))
        if spy is not None:
            spy.wait()
        result.server_cpu_ms_per_request = 1000 * (server.cpu_seconds() - cpu_before) / max(result.answered, 1)
        return result
    finally:
        server.stop()


def ceiling_rps(model_repo: Path, model: str, batch_size: int, seconds: float, threads: int) -> float:
    """Items per second of the backend alone at ``batch_size``, in this process."""
    spec = load_repository(model_repo)[model]
    backend = OnnxRuntimeBackend(spec.versions[spec.latest_version], spec.input, spec.output, threads=threads)
    batch = np.random.default_rng(0).random((batch_size, *spec.input.dims), dtype=np.float32)
    runs = run_alone(backend, batch, seconds, warmup=20)
    backend.close()
    return runs.items_per_s


def main(args: argparse.Namespace) -> int:
    photos = make_photos(args.digits, 64, args.photo_side)
    spec = load_repository(args.model_repo)[args.model]
    max_delay_ms = spec.config.dynamic_batching.max_queue_delay_microseconds / 1000
    with tempfile.TemporaryDirectory() as tmp:
        pki = init_pki(Path(tmp) / "pki")

        def loaded(url: str) -> Coroutine[None, None, RunResult]:
            return measure(url, pki, args.model, photos, args.clients, args.warmup, args.duration)

        def no_load(url: str) -> Coroutine[None, None, RunResult]:
            return measure(url, pki, args.model, photos, 1, args.warmup / 2, args.duration / 2)

        print(
            f"model {args.model}: {args.clients} concurrent HTTPS clients, {args.duration:.0f} s per run, "
            f"{len(photos)} PNG photos of {np.mean([len(p) for p in photos]) / 1024:.0f} KiB on average",
            flush=True,
        )
        idle = run_gateway(pki, args.model_repo, True, no_load)
        on = run_gateway(pki, args.model_repo, True, loaded)
        off = run_gateway(pki, args.model_repo, False, loaded)
        rate = args.paced_fraction * on.rps

        def paced(url: str) -> Coroutine[None, None, RunResult]:
            return measure(url, pki, args.model, photos, args.clients, args.warmup, args.duration, rate=rate)

        paced_on = run_gateway(pki, args.model_repo, True, paced)
        shares = {}
        if args.profile:  # a separate run: sampling slows the gateway, so it never feeds the table
            profile = (Path(tmp) / "profile.raw", args.warmup + args.duration)
            run_gateway(pki, args.model_repo, True, loaded, profile)
            shares = stage_shares(profile[0])
    return _report(args, max_delay_ms, idle, on, off, paced_on, shares)


def _report(
    args: argparse.Namespace,
    max_delay_ms: float,
    idle: RunResult,
    on: RunResult,
    off: RunResult,
    paced_on: RunResult,
    shares: dict[str, float],
) -> int:
    """The table, the ratios and the p99 bound of one run, then the same as one JSON line."""
    threads = os.cpu_count() or 1
    ceiling = ceiling_rps(args.model_repo, args.model, max(1, round(on.mean_batch)), args.duration / 3, threads)
    bound_ms = max_delay_ms + 2 * on.mean_execution_ms + idle.p99_ms
    print(f"{'':<22}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'batch':>8}{'exec ms':>9}{'CPU ms/req':>12}{'errors':>8}")
    rows = (
        ("no load (1 client)", idle),
        ("batching on", on),
        ("batching off", off),
        (f"on, paced {paced_on.rps:.0f}/s", paced_on),
    )
    for name, result in rows:
        print(
            f"{name:<22}{result.rps:>9.0f}{result.p50_ms:>9.1f}{result.p99_ms:>9.1f}{result.mean_batch:>8.1f}"
            f"{result.mean_execution_ms:>9.2f}{result.server_cpu_ms_per_request:>12.2f}{result.errors:>8}"
        )
    if shares:
        print(
            "where the gateway's CPU goes (py-spy, batching on, loaded): "
            + ", ".join(f"{name} {share:.0%}" for name, share in shares.items())
        )
    ratio = on.rps / off.rps if off.rps else float("inf")
    print(
        f"throughput on/off: {ratio:.2f}x; ceiling (backend alone at batch {max(1, round(on.mean_batch))}, "
        f"{threads} threads): {ceiling:.0f} items/s; end to end reaches {on.rps / ceiling:.1%} of it"
    )
    print(
        f"p99 bound (max delay {max_delay_ms:.1f} + 2 x exec {on.mean_execution_ms:.2f} + no-load p99 "
        f"{idle.p99_ms:.1f}) = {bound_ms:.1f} ms: p99 with {args.clients} clients = {on.p99_ms:.1f} ms "
        f"({'within' if on.p99_ms <= bound_ms else 'over'}); p99 paced at {args.paced_fraction:.0%} of capacity = "
        f"{paced_on.p99_ms:.1f} ms ({'within' if paced_on.p99_ms <= bound_ms else 'over'})"
    )
    print(
        json.dumps(
            {
                "on_rps": round(on.rps, 1),
                "off_rps": round(off.rps, 1),
                "ratio": round(ratio, 3),
                "p50_ms_on": round(on.p50_ms, 2),
                "p99_ms_on": round(on.p99_ms, 2),
                "mean_batch_on": round(on.mean_batch, 2),
                "ceiling_rps": round(ceiling, 1),
                "ceiling_fraction": round(on.rps / ceiling, 4),
                "p99_ms_paced": round(paced_on.p99_ms, 2),
                "p99_bound_ms": round(bound_ms, 2),
            }
        )
    )
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("batching", help="throughput and latency with dynamic batching on and off")
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--model-repo", type=Path, default=Path("model_repo"))
    parser.add_argument("--digits", type=Path, default=DEFAULT_DIGITS)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--photo-side", type=int, default=160, help="short side of the PNG photos sent")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--profile", action="store_true", help="sample the loaded gateway with py-spy")
    parser.add_argument(
        "--paced-fraction", type=float, default=0.7, help="open-loop run at this fraction of the measured throughput"
    )
    parser.set_defaults(handler=main)
