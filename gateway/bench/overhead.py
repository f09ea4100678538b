"""`gateway bench overhead`: what the gateway itself costs per request, on every surface, in one run.

Starts the gateway as `gateway serve` does (mTLS, embedded Redis prediction log, default
config; ``--workers`` sets server.workers), once with dynamic batching on and once off. Each
surface is then driven by ``--clients`` concurrent keep-alive connections from a separate
load-generator process (gateway/bench/overhead_load.py; its own CPU is reported apart).
The gateway's CPU is read from /proc before and after each surface, summed over every
gateway process (the parent and its worker processes); the embedded redis-server's CPU is
its own column. CPU per request = CPU seconds / answers (warm-up included, as the CPU is).
The model runs inside the gateway (ONNX Runtime), so its CPU is part of that figure: the
``model`` column is the model's own CPU where it runs (the gateway measures every run on the
session's threads: ``gateway_model_cpu_seconds`` on /metrics), and ``beyond`` is the rest, what
the gateway itself costs per request. ``alone`` is the model measured alone afterwards (this
process, each row's mean batch size, a worker's share of the threads), for comparison.

With ``--open-loop F ...``, each surface is then also driven open loop (Poisson arrivals, latency from
each request's scheduled arrival) at those fractions of the throughput its closed loop just reached,
and the highest fraction whose p99 stays under ``--p99-budget`` (100 ms) is its capacity: what a
service can promise at that latency, as a share of what it does saturated.

Before the load, each payload's decode and preparation is timed in this process as the CPU
time of one thread (p50; wall time would count the other helpers' load on a shared
machine), next to a 12-megapixel phone JPEG. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from gateway.bench.grpc_floor import MODES
from gateway.bench.http_load import Connection
from gateway.bench.overhead_load import Job
from gateway.bench.photo_path import DEFAULT_PHOTO, phone_jpeg
from gateway.bench.photos import digit_photo
from gateway.bench.server_process import GatewayProcess, cpu_seconds_of, gateway_and_redis_pids, start_gateway
from gateway.models.repository import ModelSpec, load_repository
from gateway.preprocess.pipeline import prepare_photo
from gateway.security.pki import PkiPaths, init_pki
from gateway.security.tls import client_context

DEFAULT_DIGITS = Path("tests/data/mnist_heldout_sample.npz")
HOTDOG_PHOTOS = Path("model_repo/training/hotdog_photos")
PHOTO_COUNT = 32
MAX_PIXELS = 50_000_000


@dataclass(frozen=True)
class Surface:
    name: str
    kind: str
    """The load generator's surface: rest | grpc-classify | kserve-grpc | kserve-http | tfs-grpc."""
    model: str
    payloads: list[bytes] = field(repr=False)
    content_type: str = "image/jpeg"
    shape: tuple[int, ...] = ()


def mnist_photos(digits: np.ndarray, fmt: str, min_side: int) -> list[bytes]:
    """Phone-style photos of held-out digits (200-600 px for JPEG at ``min_side`` 300)."""
    rng = np.random.default_rng(1)
    return [digit_photo(d, rng, min_side=min_side, fmt=fmt) for d in digits[:PHOTO_COUNT]]


def hotdog_uploads(root: Path) -> list[bytes]:
    """Real hot dog photos as the mobile client uploads them: upright JPEG, short side 448, quality 85."""
    from mobile_client.prepare import prepare_photo as prepare_upload
    from mobile_client.values import ModelInfo

    info = ModelInfo("hotdog", "imagenet_rgb", 3, 224, 224)
    sources = sorted(root.glob("*/*.jpg"))[:PHOTO_COUNT]
    return [prepare_upload(path.read_bytes(), info).body for path in sources]


def surfaces(digits: np.ndarray, hotdog_root: Path) -> list[Surface]:
    row = (digits[0].astype(np.float32) / 255.0)[np.newaxis, np.newaxis].astype("<f4").tobytes()
    tensor = {"payloads": [row], "shape": (1, 1, 28, 28)}
    jpegs = mnist_photos(digits, "JPEG", 300)
    return [
        Surface("REST MNIST JPEG", "rest", "mnist", jpegs),
        Surface("REST MNIST PNG", "rest", "mnist", mnist_photos(digits, "PNG", 160), "image/png"),
        Surface("REST hot dog JPEG 448", "rest", "hotdog", hotdog_uploads(hotdog_root)),
        Surface("gRPC Classify (MNIST JPEG)", "grpc-classify", "mnist", jpegs),
        Surface("KServe gRPC tensor", "kserve-grpc", "mnist", **tensor),
        Surface("KServe HTTP binary tensor", "kserve-http", "mnist", **tensor),
        Surface("TF Serving gRPC tensor", "tfs-grpc", "mnist", **tensor),
    ]


def cpu_seconds(root: int) -> tuple[float, float]:
    """(CPU seconds of the gateway's processes, of its embedded redis-server) so far."""
    gateway, redis = gateway_and_redis_pids(root)
    return cpu_seconds_of(gateway), cpu_seconds_of(redis)


def _summed(metrics: str, name: str, model: str) -> float:
    """The sum of sample ``name`` over every version of ``model``."""
    labels = rf'\{{[^}}]*model="{re.escape(model)}"[^}}]*\}}'
    return sum(float(v) for v in re.findall(rf"^{name}{labels} (\S+)$", metrics, re.M))


def _model_totals(metrics: str, model: str) -> tuple[float, float, float]:
    """(sum, count) of gateway_batch_size and the model's CPU seconds, over every version of ``model``."""
    return tuple(
        _summed(metrics, name, model)
        for name in ("gateway_batch_size_sum", "gateway_batch_size_count", "gateway_model_cpu_seconds_total")
    )


async def _scrape(base_url: str, pki: PkiPaths) -> str:
    context = client_context(pki.ca_cert, pki.client_cert("app"), pki.client_key("app"))
    connection = await Connection.open(base_url, context)
    try:
        status, body = await connection.get("/metrics")
    finally:
        await connection.close()
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    return body.decode()


def scrape(base_url: str, pki: PkiPaths) -> str:
    import asyncio

    return asyncio.run(_scrape(base_url, pki))


def _job(
    surface: Surface, base_url: str, grpc_target: str, pki: PkiPaths, args: argparse.Namespace, rate: float = 0.0
) -> Job:
    return Job(
        surface=surface.kind,
        base_url=base_url,
        grpc_target=grpc_target,
        ca=str(pki.ca_cert),
        cert=str(pki.client_cert("app")),
        key=str(pki.client_key("app")),
        model=surface.model,
        payloads=surface.payloads,
        content_type=surface.content_type,
        shape=list(surface.shape),
        clients=args.clients,
        warmup_s=args.warmup,
        duration_s=args.duration,
        rate=rate,
    )


def run_load(job: Job, name: str, args: argparse.Namespace) -> dict:
    """The load generator's result for one job (a process of its own, so its CPU is not the server's)."""
    finished = subprocess.run(
        [sys.executable, "-m", "gateway.bench.overhead_load"],
        input=job.to_json(),
        capture_output=True,
        text=True,
        check=False,
        timeout=args.warmup + args.duration + 120,
    )
    if finished.returncode != 0:
        raise RuntimeError(f"load generator failed on {name}:\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def drive_floor(mode: str, surface: Surface, pki: PkiPaths, args: argparse.Namespace) -> dict:
    """The bare gRPC server of ``grpc_floor`` in ``mode``, driven like the gateway's KServe gRPC surface."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.bench.grpc_floor",
            mode,
            str(pki.ca_cert),
            str(pki.server_cert),
            str(pki.server_key),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(server.stdout.readline())
        job = _job(surface, "", f"localhost:{port}", pki, args)
        cpu_before = cpu_seconds_of([server.pid])
        result = run_load(job, f"the {mode} floor", args)
        cpu_ms = 1000 * (cpu_seconds_of([server.pid]) - cpu_before) / max(result["answered"], 1)
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    return {**_load_figures(result), "server_cpu_ms": round(cpu_ms, 3)}


def _load_figures(result: dict) -> dict:
    """The load generator's own figures of one run, rounded: throughput, latency, errors, its CPU per answer."""
    return {
        "rps": round(result["rps"], 1),
        "p50_ms": round(result["p50_ms"], 2),
        "p99_ms": round(result["p99_ms"], 2),
        "errors": result["errors"],
        "client_cpu_ms": round(1000 * result["client_cpu_s"] / max(result["answered"], 1), 3),
    }


def drive_open_loop(
    server: GatewayProcess,
    pki: PkiPaths,
    surface: Surface,
    saturated_rps: float,
    args: argparse.Namespace,
) -> list[dict]:
    """The surface at each ``--open-loop`` fraction of ``saturated_rps``, Poisson arrivals, one run each (with
    the gateway's CPU per request and mean batch, as ``drive`` measures them)."""
    rows = []
    for fraction in sorted(args.open_loop):
        rate = fraction * saturated_rps
        row = drive(server, pki, surface, args, rate=rate)
        rows.append({"fraction": fraction, "offered_rps": round(rate, 1), **row})
        print(f"    open loop at {fraction:.0%}: {json.dumps(rows[-1])}", flush=True)
    return rows


def capacity_within(rows: list[dict], budget_ms: float) -> dict | None:
    """The open-loop row of the highest fraction before the first whose p99 reached ``budget_ms`` or that had
    errors (None: already the lowest fraction did)."""
    best = None
    for row in sorted(rows, key=lambda r: r["fraction"]):
        if row["p99_ms"] >= budget_ms or row["errors"] > 0:
            break
        best = row
    return best


def measure_floors(chosen: list[Surface], pki: PkiPaths, args: argparse.Namespace) -> dict[str, dict]:
    """The ``--floor`` servers' rows, when the KServe gRPC surface is among the chosen ones."""
    kserve_grpc = next((s for s in chosen if s.kind == "kserve-grpc"), None)
    floors = {}
    for mode in args.floor if kserve_grpc is not None else ():
        floors[mode] = row = drive_floor(mode, kserve_grpc, pki, args)
        print(f"  bare gRPC server ({mode}), canned KServe answer: {json.dumps(row)}", flush=True)
    return floors


def drive(
    server: GatewayProcess,
    pki: PkiPaths,
    surface: Surface,
    args: argparse.Namespace,
    rate: float = 0.0,
) -> dict:
    """One surface against a running gateway: load from a separate process (closed loop, or open loop at
    ``rate`` requests/s), CPU and batch sizes around it."""
    job = _job(surface, server.base_url, server.grpc_target, pki, args, rate)
    totals_before = _model_totals(scrape(server.base_url, pki), surface.model)
    cpu_before = cpu_seconds(server.process.pid)
    result = run_load(job, surface.name, args)
    cpu_after = cpu_seconds(server.process.pid)
    totals_after = _model_totals(scrape(server.base_url, pki), surface.model)
    answered = max(result["answered"], 1)
    batch_sum, batch_count, model_cpu_s = (a - b for a, b in zip(totals_after, totals_before, strict=True))
    gateway_cpu_ms = 1000 * (cpu_after[0] - cpu_before[0]) / answered
    return {
        **_load_figures(result),
        "gateway_cpu_ms": round(gateway_cpu_ms, 3),
        "model_cpu_ms": round(1000 * model_cpu_s / answered, 3),
        "beyond_model_cpu_ms": round(gateway_cpu_ms - 1000 * model_cpu_s / answered, 3),
        "redis_cpu_ms": round(1000 * (cpu_after[1] - cpu_before[1]) / answered, 3),
        "mean_batch": round(batch_sum / batch_count, 2) if batch_count else 0.0,
    }


def cpu_p50_ms(step: Callable[[], object], repeat: int) -> float:
    """Median CPU time of ``step`` on this thread (after one untimed call)."""
    step()
    times = []
    for _ in range(repeat):
        started = time.thread_time()
        step()
        times.append(time.thread_time() - started)
    return float(np.median(times)) * 1000.0


def preparation_ms(specs: dict[str, ModelSpec], all_surfaces: list[Surface], photo: Path, repeat: int) -> dict:
    """CPU p50 of decode + prepare on one thread, per photo surface, and for a 12 MP phone JPEG (hot dog)."""
    figures = {}
    for surface in all_surfaces:
        if surface.kind not in ("rest", "grpc-classify") or surface.name in figures:
            continue
        spec = specs[surface.model]
        per_photo = [
            cpu_p50_ms(lambda p=p, spec=spec: prepare_photo(p, spec, max_pixels=MAX_PIXELS), max(3, repeat // 8))
            for p in surface.payloads[:8]
        ]
        figures[surface.name] = round(float(np.median(per_photo)), 3)
    phone = phone_jpeg(photo)
    with Image.open(io.BytesIO(phone)) as image:
        size = image.size
    name = f"hot dog {size[0]}x{size[1]} phone JPEG"
    figures[name] = round(cpu_p50_ms(lambda: prepare_photo(phone, specs["hotdog"], max_pixels=MAX_PIXELS), repeat), 3)
    return figures


def model_cpu_ms(spec: ModelSpec, batch: int, threads: int, seconds: float) -> float:
    """CPU ms per item of the model alone (ONNX Runtime in this process) at ``batch`` rows and ``threads``."""
    from gateway.backends.onnxruntime import OnnxRuntimeBackend
    from gateway.bench.backend_alone import run_alone

    version = spec.initial_stable if spec.initial_stable in spec.versions else spec.latest_version
    backend = OnnxRuntimeBackend(spec.versions[version], spec.input, spec.output, threads=threads)
    rows = np.random.default_rng(0).random((batch, *spec.input.dims), dtype=np.float32)
    runs = run_alone(backend, rows, seconds, warmup=1, least=3)
    backend.close()
    return runs.cpu_ms_per_item


def add_model_alone(results: dict[str, dict[str, dict]], chosen: list[Surface], specs, threads: int) -> None:
    """Each row gets the model's CPU per item measured alone, at the batch size the row ran (for comparison)."""
    cache: dict[tuple[str, int], float] = {}
    for surface in chosen:
        for row in results[surface.name].values():
            key = (surface.model, max(1, round(row["mean_batch"])))
            if key not in cache:
                cache[key] = model_cpu_ms(specs[surface.model], key[1], threads, seconds=1.0)
            row["model_alone_cpu_ms"] = round(cache[key], 3)


def _print_table(results: dict[str, dict[str, dict]]) -> None:
    print(
        f"{'surface':<28}{'batching':>9}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'batch':>7}"
        f"{'gateway CPU ms/req':>20}{'model':>7}{'beyond':>8}{'alone':>7}{'redis':>7}{'client':>8}{'errors':>8}"
    )
    for name, modes in results.items():
        for mode, row in modes.items():
            print(
                f"{name:<28}{mode:>9}{row['rps']:>8.0f}{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}"
                f"{row['mean_batch']:>7.1f}{row['gateway_cpu_ms']:>20.2f}{row['model_cpu_ms']:>7.2f}"
                f"{row['beyond_model_cpu_ms']:>8.2f}{row['model_alone_cpu_ms']:>7.2f}{row['redis_cpu_ms']:>7.2f}"
                f"{row['client_cpu_ms']:>8.2f}"
                f"{row['errors']:>8}"
            )


def _print_open_loop(results: dict[str, dict[str, dict]], budget_ms: float) -> None:
    rows = [(name, mode, row) for name, modes in results.items() for mode, row in modes.items() if "open_loop" in row]
    if not rows:
        return
    print(
        f"open loop: Poisson arrivals at a share of the closed loop's req/s, latency from each scheduled arrival; "
        f"capacity: the highest share before p99 reached {budget_ms:.0f} ms"
    )
    print(
        f"{'surface':<28}{'batching':>9}{'share':>7}{'offered':>9}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'batch':>7}"
        f"{'gateway CPU ms/req':>20}{'errors':>8}"
    )
    for name, mode, row in rows:
        for paced in row["open_loop"]:
            print(
                f"{name:<28}{mode:>9}{paced['fraction']:>7.0%}{paced['offered_rps']:>9.0f}{paced['rps']:>8.0f}"
                f"{paced['p50_ms']:>9.1f}{paced['p99_ms']:>9.1f}{paced['mean_batch']:>7.1f}"
                f"{paced['gateway_cpu_ms']:>20.2f}{paced['errors']:>8}"
            )
        found = row["capacity"]
        print(
            f"{name:<28}{mode:>9}  capacity at p99 < {budget_ms:.0f} ms: "
            + (f"{found['fraction']:.0%} of {row['rps']:.0f} req/s" if found else "under the lowest share")
        )


def model_threads(workers: int | None) -> int:
    """A worker's share of the cores (the ONNX threads of the model-alone column)."""
    cores = os.cpu_count() or 1
    return max(1, cores // (workers or cores))


def _print_floors(floors: dict[str, dict]) -> None:
    for mode, row in floors.items():
        print(
            f"{'floor: bare gRPC ' + mode:<28}{'-':>9}{row['rps']:>8.0f}{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}"
            f"{'-':>7}{row['server_cpu_ms']:>20.2f}{'':>7}{'':>8}{'':>7}{'':>7}{row['client_cpu_ms']:>8.2f}"
            f"{row['errors']:>8}"
        )
    if floors:
        print(
            "floor: a bare gRPC server with mTLS answering KServe ModelInfer with a canned response, driven by the "
            "same load (gateway/bench/grpc_floor.py): what grpcio itself costs per call"
        )


def _print_legend(threads: int) -> None:
    print(
        "model: the model's own CPU per request, measured in the gateway on the threads that ran it; beyond: "
        f"gateway CPU minus that; alone: ONNX Runtime alone at the row's batch size with {threads} thread(s) "
        "(a worker's share of the cores), CPU ms per item"
    )
    print(f"load average after the run: {os.getloadavg()[0]:.2f}")


def chosen_surfaces(every: list[Surface], only: str) -> list[Surface]:
    """The surfaces whose name contains ``only`` (any case); none: the names are printed to choose from."""
    chosen = [s for s in every if only.lower() in s.name.lower()]
    if not chosen:
        print(f"--only {only!r} matches no surface; the surfaces: {', '.join(s.name for s in every)}")
    return chosen


def measure_mode(
    mode: str, chosen: list[Surface], pki: PkiPaths, tmp: Path, args: argparse.Namespace
) -> dict[str, dict]:
    """Every chosen surface against one gateway started with batching ``mode`` (on | off): a row per surface."""
    redis_dir = (tmp / f"redis-{mode}").resolve()
    env = {
        "GATEWAY_BATCHING_ENABLED": {"on": "true", "off": "false"}[mode],
        "GATEWAY_PREDICTIONS_EMBEDDED_DB": str(redis_dir / "gateway.db"),
        **({"PYTHONPATH": str(args.code.resolve())} if args.code else {}),  # with cwd: `-m` puts it first
    }
    server = start_gateway(
        ["--pki-dir", str(pki.root), "--model-repo", str(args.model_repo.resolve())],
        env=env,
        workers=args.workers,
        cwd=args.code.resolve() if args.code else None,
    )
    rows = {}
    try:
        for surface in chosen:
            rows[surface.name] = row = drive(server, pki, surface, args)
            print(f"  {surface.name}, batching {mode}: {json.dumps(row)}", flush=True)
            if args.open_loop:
                row["open_loop"] = drive_open_loop(server, pki, surface, row["rps"], args)
                row["capacity"] = capacity_within(row["open_loop"], args.p99_budget)
    finally:
        server.stop()
    return rows


def main(args: argparse.Namespace) -> int:
    with np.load(args.digits) as data:
        digits = data["x"]
    specs = load_repository(args.model_repo)
    chosen = chosen_surfaces(surfaces(digits, args.hotdog_photos), args.only)
    if not chosen:
        return 2
    preparation = preparation_ms(specs, chosen, args.photo, args.repeat) if not args.skip_preparation else {}
    for name, value in preparation.items():
        print(f"decode + prepare, CPU of one thread, p50: {name}: {value:.2f} ms", flush=True)
    print(
        f"{args.clients} concurrent keep-alive clients per surface, {args.warmup:.0f} s warm-up + "
        f"{args.duration:.0f} s measured; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results: dict[str, dict[str, dict]] = {s.name: {} for s in chosen}
    with tempfile.TemporaryDirectory() as tmp:
        pki = init_pki(Path(tmp) / "pki")
        for mode in args.batching:
            for name, row in measure_mode(mode, chosen, pki, Path(tmp), args).items():
                results[name][mode] = row
        floors = measure_floors(chosen, pki, args)
    threads = args.model_threads if args.model_threads is not None else model_threads(args.workers)
    add_model_alone(results, chosen, specs, threads)
    _print_table(results)
    _print_floors(floors)
    _print_open_loop(results, args.p99_budget)
    _print_legend(threads)
    print(
        json.dumps(
            {
                "clients": args.clients,
                "workers": "default" if args.workers is None else args.workers,
                "code": str(args.code or "."),
                "preparation_p50_ms": preparation,
                "surfaces": results,
                "grpc_floor": floors,
            }
        )
    )
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("overhead", help="gateway CPU per request on every surface, batching on and off")
    parser.add_argument("--model-repo", type=Path, default=Path("model_repo"))
    parser.add_argument("--digits", type=Path, default=DEFAULT_DIGITS)
    parser.add_argument("--hotdog-photos", type=Path, default=HOTDOG_PHOTOS)
    parser.add_argument("--photo", type=Path, default=DEFAULT_PHOTO, help="the real photo enlarged to 12 MP")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per surface")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--workers", type=int, help="server.workers (0: one per core; default: the gateway's configuration)"
    )
    parser.add_argument(
        "--code", type=Path, help="run the gateway from this checkout (a before/after comparison under one load)"
    )
    parser.add_argument(
        "--batching", nargs="+", choices=("on", "off"), default=["on", "off"], help="which batching modes to run"
    )
    parser.add_argument(
        "--model-threads", type=int, help="ONNX threads for the model-alone column (default: cores / workers)"
    )
    parser.add_argument("--only", default="", help="run only the surfaces whose name contains this (any case)")
    parser.add_argument("--repeat", type=int, default=40, help="timings per photo for the preparation figures")
    parser.add_argument("--skip-preparation", action="store_true")
    parser.add_argument(
        "--floor",
        nargs="*",
        choices=MODES,
        default=["aio"],
        help="bare gRPC servers to measure beside the KServe gRPC surface (see gateway/bench/grpc_floor.py)",
    )
    parser.add_argument(
        "--open-loop",
        nargs="+",
        type=float,
        default=[],
        metavar="SHARE",
        help="after each closed-loop run, open-loop runs at these shares of its req/s (e.g. 0.5 0.7 0.9)",
    )
    parser.add_argument("--p99-budget", type=float, default=100.0, help="the p99 (ms) that bounds the capacity")
    parser.set_defaults(handler=main)
