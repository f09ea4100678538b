"""`gateway bench gpu`: the figures of issue 20 on a GPU host, in one run of about 5 minutes, as JSON.

- the model alone (hot dog and MNIST, batch 1 to 64) on every device the host has: CPU, CUDA with I/O
  binding, TensorRT where installed;
- photo decoding (gateway/bench/gpu_decode.py): 12 MP phone JPEGs for each model, the CPU path against
  every GPU decoder (torchvision's nvJPEG, nvImageCodec where installed) at device batches 1 to 64, printed
  as a comparison table;
- through the gateway over mTLS, batching on and off, each model on ``--instances`` instances per GPU:
  REST photos (12 MP phone JPEGs, hot dog and MNIST) with CPU decode and GPU decode, and KServe binary
  tensors (hot dog and MNIST) of 1 to 64 rows per request; req/s, latency and the gateway's CPU ms per
  request;
- ``gateway_cores_per_gpu``: the GPU's best images/s alone over the images/s one gateway core serves, per
  model and decode device (what the gateway needs in CPU cores to keep one GPU busy).

``--dry-run`` runs every step on the CPU with tiny durations (what CI and a CPU machine can check); a
missing part (no CUDA provider, no GPU decoder) is written into the JSON as such, never skipped silently.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from gateway.backends.devices import CPU, CUDA, TENSORRT, DeviceProbe, Instance, tensorrt_profile
from gateway.backends.onnxruntime import OnnxRuntimeBackend
from gateway.bench.backend_alone import run_alone
from gateway.bench.gpu_decode import comparison_lines, decoding
from gateway.bench.http_load import Connection
from gateway.bench.photos import digit_photo
from gateway.bench.server_process import start_gateway
from gateway.models.repository import ModelSpec, load_repository
from gateway.security.pki import init_pki
from gateway.security.tls import client_context

BATCHES = (1, 2, 4, 8, 16, 32, 64)
MODELS = ("hotdog", "mnist")


def devices(probe: DeviceProbe, dry_run: bool) -> dict[str, tuple]:
    """Name -> the providers of one session, for every device this host can run the model alone on."""
    found: dict[str, tuple] = {"cpu": ((CPU, {}),)}
    providers = set(probe.providers())
    if dry_run or CUDA not in providers or not isinstance(probe.gpu_count(), int) or not probe.gpu_count():
        return found
    found["cuda"] = ((CUDA, {"device_id": 0}), (CPU, {}))
    if TENSORRT in providers:
        found["tensorrt"] = ((TENSORRT, {"device_id": 0, "trt_engine_cache_enable": True}), *found["cuda"])
    return found


def with_profile(providers: tuple, spec, largest: int) -> tuple:
    """TensorRT with one optimisation profile up to ``largest`` rows (one engine build for every batch)."""
    name, options = providers[0]
    if name != TENSORRT:
        return providers
    config = mc.ModelConfig()
    config.CopyFrom(spec.config)
    config.max_batch_size = largest
    return ((name, {**options, **tensorrt_profile(config)}), *providers[1:])


def model_alone(repo: Path, seconds: float, probe: DeviceProbe, dry_run: bool) -> dict:
    """Images/s of each model alone, by device and batch size (I/O binding on the GPU)."""
    specs, figures = load_repository(repo), {}
    for name in MODELS:
        spec = specs[name]
        for device, providers in devices(probe, dry_run).items():
            place = "cpu" if device == "cpu" else "cuda:0"
            providers = with_profile(providers, spec, max(BATCHES))
            instance = Instance(f"{name}_bench", place, providers, (os.cpu_count() or 1) if device == "cpu" else 1)
            backend = OnnxRuntimeBackend(spec.versions[spec.latest_version], spec.input, spec.output, 0, [instance])
            by_batch = {}
            for size in BATCHES[:3] if dry_run else BATCHES:
                batch = np.random.default_rng(0).random((size, *spec.input.dims), dtype=np.float32)
                by_batch[size] = round(run_alone(backend, batch, seconds, warmup=3).items_per_s, 1)
            backend.close()
            figures[f"{name}/{device}"] = by_batch
    return figures


def phone_jpegs(count: int, side: int) -> list[bytes]:
    rng = np.random.default_rng(3)
    digits = rng.integers(0, 255, (count, 28, 28)).astype(np.uint8)
    return [digit_photo(digit, rng, min_side=side) for digit in digits]


def gpu_repo(root: Path, instances: int, gpu: bool) -> Path:
    """model_repo with each model on ``instances`` instances of GPU 0 (of the CPU for a dry run)."""
    repo = root / "repo"
    shutil.copytree(Path("model_repo"), repo, ignore=shutil.ignore_patterns("training"))
    kind = "KIND_GPU, gpus: [ 0 ]" if gpu else "KIND_CPU"
    for name in MODELS:
        config = repo / name / "config.pbtxt"
        config.write_text(
            config.read_text().replace(
                "instance_group [ { count: 1 } ]", f"instance_group [ {{ kind: {kind}, count: {instances} }} ]"
            )
        )
    return repo


def tensor_bodies(spec: ModelSpec, rows: int, count: int) -> list[tuple[bytes, dict[str, str]]]:
    """KServe v2 binary-tensor bodies of ``rows`` rows each (what a tensor client sends), with their headers."""
    rng = np.random.default_rng(5)
    bodies = []
    for _ in range(count):
        tensor = rng.random((rows, *spec.input.dims), dtype=np.float32).tobytes()
        header = {
            "inputs": [
                {
                    "name": spec.input.name,
                    "shape": [rows, *spec.input.dims],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(tensor)},
                }
            ]
        }
        head = json.dumps(header).encode()
        bodies.append((head + tensor, {"Inference-Header-Content-Length": str(len(head))}))
    return bodies


async def drive(
    base_url: str, pki, path: str, bodies: list[tuple[bytes, dict[str, str]]], content_type: str, clients: int, args
) -> dict:
    """A closed loop of ``clients`` connections for ``args.duration`` seconds after the warm-up."""
    context = client_context(pki.ca_cert, pki.client_cert("app"), pki.client_key("app"))
    connections = [await Connection.open(base_url, context) for _ in range(clients)]
    loop = asyncio.get_running_loop()
    start = loop.time() + args.warmup
    end = start + args.duration
    latencies, errors, answered = [], 0, 0

    async def client(connection: Connection, sent: int) -> None:
        nonlocal errors, answered
        while loop.time() < end:
            began = loop.time()
            body, headers = bodies[sent % len(bodies)]
            status, _ = await connection.post(path, body, content_type, headers)
            answered += 1
            sent += len(connections)
            if began < start:
                continue  # the warm-up
            if status == 200:
                latencies.append(loop.time() - began)
            else:
                errors += 1

    await asyncio.gather(*(client(c, i) for i, c in enumerate(connections)))
    for connection in connections:
        await connection.close()
    ordered = np.sort(latencies) * 1000 if latencies else np.array([float("nan")])
    return {
        "rps": round(len(latencies) / args.duration, 1),
        "p50_ms": round(float(np.percentile(ordered, 50)), 2),
        "p99_ms": round(float(np.percentile(ordered, 99)), 2),
        "errors": errors,
        "answered": answered,
    }


def gateway_runs(specs: dict[str, ModelSpec], photos: list[bytes], rows: tuple[int, ...]) -> list[tuple]:
    """(name, path, bodies, content type, rows per request) of every load the gateway is put under."""
    runs = [
        (f"{model}/rest", f"/api/v1/models/{model}/classify", [(p, {}) for p in photos], "image/jpeg", 1)
        for model in MODELS
    ]
    for model in MODELS:
        for count in rows:
            bodies = tensor_bodies(specs[model], count, 8 if count < 64 or model == "mnist" else 2)
            name = f"{model}/kserve_rows_{count}"
            runs.append((name, f"/v2/models/{model}/infer", bodies, "application/octet-stream", count))
    return runs


def through_gateway(repo: Path, runs: list[tuple], decoders: list[str], args) -> dict:
    """Through one gateway process per setting over mTLS, batching on and off: REST photos (each decode
    device) and KServe tensors (the CPU gateway only: tensors are not decoded); req/s (and rows/s),
    latency, and the gateway's CPU ms per request."""
    pki = init_pki(Path(tempfile.mkdtemp(prefix="gpu-bench-pki-")))
    figures = {}
    for batching in (True, False):
        for decode in decoders:
            env = {"GATEWAY_BATCHING_ENABLED": str(batching).lower(), "GATEWAY_PREPROCESS_DEVICE": decode}
            server = start_gateway(["--pki-dir", str(pki.root), "--model-repo", str(repo)], env=env)
            try:
                for name, path, bodies, content_type, rows in runs:
                    if decode != "cpu" and "rest" not in name:
                        continue  # tensors are not decoded
                    clients = max(2, args.clients // rows)  # about the same rows in flight whatever the rows
                    before = server.cpu_seconds()
                    result = asyncio.run(drive(server.base_url, pki, path, bodies, content_type, clients, args))
                    cpu_ms = 1000 * (server.cpu_seconds() - before) / max(result["answered"], 1)
                    result["gateway_cpu_ms_per_request"] = round(cpu_ms, 3)
                    result["rows_per_s"] = round(result["rps"] * rows, 1)
                    figures[f"{name}/decode_{decode}/batching_{'on' if batching else 'off'}"] = result
            finally:
                server.stop()
    return figures


def cores_per_gpu(alone: dict, gateway: dict) -> dict:
    """How many gateway cores keep one GPU busy: its best images/s alone over the images/s one core serves
    (REST photos, batching on, per decode device); without a GPU model figure, why not."""
    answer: dict = {}
    for model in MODELS:
        on_gpu = alone.get(f"{model}/tensorrt") or alone.get(f"{model}/cuda")
        if not on_gpu:
            answer[model] = "no GPU figure for the model alone (no CUDA provider in this onnxruntime)"
            continue
        for decode in ("cpu", "cuda"):
            served = gateway.get(f"{model}/rest/decode_{decode}/batching_on")
            if served and served["gateway_cpu_ms_per_request"] > 0:
                per_core = 1000 / served["gateway_cpu_ms_per_request"]
                answer[f"{model}/decode_{decode}"] = round(max(on_gpu.values()) / per_core, 1)
    return answer


def main(args: argparse.Namespace) -> int:
    probe = DeviceProbe()
    out = args.out / "gpu_bench.json"
    if args.dry_run:
        args.duration, args.warmup, args.clients = 1.0, 0.5, 4
    seconds = 0.2 if args.dry_run else args.seconds
    repo = Path("model_repo")
    specs = load_repository(repo)
    report: dict = {"dry_run": args.dry_run, "providers": list(probe.providers()), "gpus": probe.gpu_count()}
    report["model_alone"] = model_alone(repo, seconds, probe, args.dry_run)
    print("model alone:", json.dumps(report["model_alone"]), flush=True)
    phones = phone_jpegs(4 if args.dry_run else 16, 300 if args.dry_run else 3000)
    report["decode"] = decoding(specs, MODELS, phones, seconds * 2, args.dry_run)
    print("\n".join(comparison_lines(report["decode"])), flush=True)
    root = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    try:
        gpu = "cuda" in devices(probe, args.dry_run)
        if not gpu:
            report["gateway_on"] = "cpu (dry run)" if args.dry_run else "cpu (no CUDA provider or GPU here)"
        gateway_repo = gpu_repo(root, args.instances, gpu)
        runs = gateway_runs(specs, phones, (1, 8) if args.dry_run else (1, 8, 64))
        decoders = ["cpu"] + (["cuda"] if not isinstance(report["decode"]["hotdog"]["torchvision"], str) else [])
        report["gateway"] = through_gateway(gateway_repo, runs, decoders, args)
        report["gateway_cores_per_gpu"] = cores_per_gpu(report["model_alone"], report["gateway"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report, default=str))
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("gpu", help="issue 20's GPU figures (model alone, through the gateway, decoding)")
    parser.add_argument("--out", type=Path, default=Path("."), help="directory for gpu_bench.json")
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU, tiny durations")
    parser.add_argument("--seconds", type=float, default=1.0, help="per model-alone measurement")
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per gateway run")
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--instances", type=int, default=2, help="instances per GPU of each model")
    parser.set_defaults(handler=main)
