"""`gateway bench triton`: clients -> Triton directly versus clients -> gateway -> the same Triton.

One run on free loopback ports: a real tritonserver (nvidia-pytriton's binary, the python backend
running the same ONNX file) with mTLS, a gateway whose backends file sends the model to it, and
``--clients`` concurrent closed-loop clients in three phases of ``--duration`` seconds each:

1. direct: tritonclient.grpc.aio -> Triton, one digit tensor per request;
2. KServe gRPC tensors: the same client and request -> the gateway -> Triton;
3. REST photos: a PNG of the same digit per request -> the gateway (decode, preprocess) -> Triton.

Triton's own statistics give the average batch it executed in each phase. The last line printed
is one JSON object: direct_rps, via_gateway_rps (KServe tensors: the same request as direct),
ratio, direct_p50_ms, via_gateway_p50_ms, added_p50_ms, and the REST photo figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio

from gateway.backends.triton_local import (
    DEFAULT_VENV,
    ServerTls,
    TritonServer,
    build_python_repository,
    start_triton,
)
from gateway.bench.http_load import Connection
from gateway.bench.photos import digit_png
from gateway.bench.server_process import start_gateway
from gateway.models.repository import load_repository
from gateway.security.pki import PkiPaths, init_pki, issue_client
from gateway.security.tls import client_context

SAMPLE = Path(__file__).resolve().parents[2] / "tests" / "data" / "mnist_heldout_sample.npz"


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def _closed_loop(clients: int, duration_s: float, warmup_s: float, call) -> dict:
    """``clients`` coroutines calling ``call(i)`` back to back; counts what finished inside the window."""
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup_s
    stop = start + duration_s

    async def client(index: int) -> None:
        nonlocal errors
        while True:
            began = loop.time()
            if began >= stop:
                return
            try:
                await call(index)
            except Exception:
                errors += 1
                continue
            ended = loop.time()
            if began >= start and ended <= stop:
                latencies.append((ended - began) * 1000)

    await asyncio.gather(*(client(i) for i in range(clients)))
    return {
        "rps": len(latencies) / duration_s,
        "p50_ms": _percentile(latencies, 50),
        "p99_ms": _percentile(latencies, 99),
        "errors": errors,
    }


def _tensor(batch: np.ndarray) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    return tensor


async def _kserve_phase(target: str, creds, args, row: np.ndarray, version: str) -> dict:
    async with triton_aio.InferenceServerClient(target, creds=creds) as client:
        outputs = [triton_grpc.InferRequestedOutput("probabilities")]

        async def call(_: int) -> None:
            await client.infer("mnist", [_tensor(row)], model_version=version, outputs=outputs, client_timeout=30)

        return await _closed_loop(args.clients, args.duration, args.warmup, call)


async def _rest_phase(base_url: str, context, args, photo: bytes) -> dict:
    connections = [await Connection.open(base_url, context) for _ in range(args.clients)]

    async def call(index: int) -> None:
        status, _ = await connections[index].post("/api/v1/models/mnist/classify", photo, "image/png")
        if status != 200:
            raise RuntimeError(status)

    try:
        return await _closed_loop(args.clients, args.duration, args.warmup, call)
    finally:
        for connection in connections:
            await connection.close()


def _executions(stats_client, version: str) -> tuple[int, int]:
    stats = stats_client.get_inference_statistics("mnist", version).model_stats[0]
    return stats.inference_count, stats.execution_count


def _row(name: str, result: dict, batch: float) -> str:
    return (
        f"{name:<28} {result['rps']:>8.0f} req/s   p50 {result['p50_ms']:>7.2f} ms   p99 {result['p99_ms']:>7.2f} ms"
        f"   Triton batch {batch:>5.1f}   errors {result['errors']}"
    )


def _clients(triton, models_pki, gateway_pki) -> tuple:
    """Credentials towards Triton and the gateway, the REST TLS context, and a Triton statistics client."""
    triton_creds = triton_grpc.grpc.ssl_channel_credentials(
        models_pki.ca_cert.read_bytes(),
        models_pki.client_key("gateway").read_bytes(),
        models_pki.client_cert("gateway").read_bytes(),
    )
    gateway_creds = triton_grpc.grpc.ssl_channel_credentials(
        gateway_pki.ca_cert.read_bytes(),
        gateway_pki.client_key("app").read_bytes(),
        gateway_pki.client_cert("app").read_bytes(),
    )
    rest_context = client_context(gateway_pki.ca_cert, gateway_pki.client_cert("app"), gateway_pki.client_key("app"))
    stats_client = triton_grpc.InferenceServerClient(
        triton.grpc_target,
        ssl=True,
        root_certificates=str(models_pki.ca_cert),
        private_key=str(models_pki.client_key("gateway")),
        certificate_chain=str(models_pki.client_cert("gateway")),
    )
    return triton_creds, gateway_creds, rest_context, stats_client


def _start_triton(args: argparse.Namespace, work: Path, models_pki: PkiPaths) -> TritonServer:
    """Triton serving mnist from a python-backend copy of the repository, over mTLS from ``models_pki``."""
    repo = work / "triton-models"
    build_python_repository(
        args.model_repo,
        repo,
        models=["mnist"],
        venv=args.venv,
        threads=args.triton_threads,
        dynamic_batching=args.triton_batching,
    )
    tls = ServerTls(models_pki.server_cert, models_pki.server_key, models_pki.ca_cert)
    return start_triton(repo, tls=tls, venv=args.venv)


def _backends_file(work: Path, models_pki: PkiPaths, target: str, inflight: int) -> Path:
    """The gateway's backends file: mnist on the one Triton replica, over mTLS."""
    backends = work / "backends.toml"
    backends.write_text(
        f'[tls]\nca = "{models_pki.ca_cert}"\ncert = "{models_pki.client_cert("gateway")}"\n'
        f'key = "{models_pki.client_key("gateway")}"\n[models.mnist]\nserver = "triton"\n'
        f'replicas = ["{target}"]\nmax_inflight_per_replica = {inflight}\n'
    )
    return backends


def run(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-triton-"))
    models_pki = init_pki(work / "models-pki")
    issue_client(models_pki, "gateway", "app")
    gateway_pki = init_pki(work / "pki")
    triton = _start_triton(args, work, models_pki)
    gateway = None
    try:
        backends = _backends_file(work, models_pki, triton.grpc_target, args.inflight)
        env = {} if args.gateway_batching else {"GATEWAY_BATCHING_ENABLED": "false"}
        gateway = start_gateway(
            ["--pki-dir", str(gateway_pki.root), "--model-repo", str(args.model_repo), "--backends", str(backends)],
            env=env,
        )
        # every phase runs the version the gateway serves by default (Triton alone would pick the latest)
        spec = load_repository(args.model_repo)["mnist"]
        version = spec.initial_stable or spec.latest_version
        with np.load(SAMPLE) as data:
            digit = data["x"][0]
        row = (digit / 255.0).astype(np.float32)[np.newaxis, np.newaxis]
        triton_creds, gateway_creds, rest_context, stats_client = _clients(triton, models_pki, gateway_pki)
        phases = {
            "direct": lambda: _kserve_phase(triton.grpc_target, triton_creds, args, row, version),
            "via_gateway": lambda: _kserve_phase(gateway.grpc_target, gateway_creds, args, row, version),
            "via_gateway_rest": lambda: _rest_phase(gateway.base_url, rest_context, args, digit_png(digit)),
        }
        names = {
            "direct": "direct (tritonclient gRPC)",
            "via_gateway": "gateway, KServe gRPC tensor",
            "via_gateway_rest": "gateway, REST photo",
        }
        results = {}
        print(
            f"{args.clients} concurrent clients, {args.duration:.0f} s per phase; Triton dynamic batching "
            f"{'on' if args.triton_batching else 'off'}, gateway batching {'on' if args.gateway_batching else 'off'}",
            flush=True,
        )
        for name, phase in phases.items():
            before = _executions(stats_client, version)
            results[name] = asyncio.run(phase())
            inferences, executions = (a - b for a, b in zip(_executions(stats_client, version), before, strict=True))
            results[name]["triton_batch"] = inferences / executions if executions else 0.0
            print(_row(names[name], results[name], results[name]["triton_batch"]), flush=True)
        stats_client.close()
    finally:
        if gateway is not None:
            gateway.stop()
        triton.stop()
    summary = _summary(args, results)
    print(json.dumps(summary), flush=True)
    return summary


def _summary(args: argparse.Namespace, results: dict[str, dict]) -> dict:
    direct, via, rest = results["direct"], results["via_gateway"], results["via_gateway_rest"]
    summary = {
        "direct_rps": round(direct["rps"], 1),
        "via_gateway_rps": round(via["rps"], 1),
        "ratio": round(via["rps"] / direct["rps"], 3) if direct["rps"] else None,
        "direct_p50_ms": round(direct["p50_ms"], 2),
        "via_gateway_p50_ms": round(via["p50_ms"], 2),
        "added_p50_ms": round(via["p50_ms"] - direct["p50_ms"], 2),
        "via_gateway_rest_rps": round(rest["rps"], 1),
        "rest_ratio": round(rest["rps"] / direct["rps"], 3) if direct["rps"] else None,
        "via_gateway_rest_p50_ms": round(rest["p50_ms"], 2),
        "clients": args.clients,
        "triton_batching": args.triton_batching,
        "gateway_batching": args.gateway_batching,
        "triton_batch": {name: round(result["triton_batch"], 1) for name, result in results.items()},
        "p99_ms": {name: round(result["p99_ms"], 2) for name, result in results.items()},
    }
    return summary


def main(args: argparse.Namespace) -> int:
    run(args)
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("triton", help="Triton direct vs through the gateway (REST photos, KServe tensors)")
    parser.add_argument("--model-repo", type=Path, default=Path("model_repo"))
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--triton-threads", type=int, default=0, help="onnxruntime threads in Triton (0: all cores)")
    parser.add_argument("--inflight", type=int, default=1, help="gateway batches in flight per replica")
    parser.add_argument(
        "--triton-batching", action=argparse.BooleanOptionalAction, default=True, help="Triton's dynamic batcher"
    )
    parser.add_argument(
        "--gateway-batching", action=argparse.BooleanOptionalAction, default=True, help="the gateway's batcher"
    )
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="Triton's venv (make triton)")
    parser.set_defaults(handler=main)
