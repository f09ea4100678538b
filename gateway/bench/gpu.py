"""`gateway bench gpu`: the figures of issue 20 on a GPU host, in one run of under 10 minutes, as JSON.

- the model alone (hot dog and MNIST, batch 1 to 64) on every device the host has: CPU, CUDA with I/O
  binding, TensorRT where installed;
- through the gateway over mTLS: REST photos (hot dog phone JPEGs, MNIST digit photos) and KServe tensors
  (MNIST), batching on and off, each model on ``--instances`` instances per GPU; the gateway's CPU time
  per request, so ``gateway_cores_per_gpu`` = the GPU's best images/s alone / the images/s one gateway
  core sustains;
- photo decoding, CPU (OpenCV/Pillow) against GPU (nvJPEG through torchvision), on 12 MP phone photos.

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
import time
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from gateway.backends.devices import CPU, CUDA, TENSORRT, DeviceProbe, Instance, tensorrt_profile
from gateway.backends.onnxruntime import OnnxRuntimeBackend
from gateway.bench.backend_alone import run_alone
from gateway.bench.http_load import Connection
from gateway.bench.photos import digit_photo
from gateway.bench.server_process import start_gateway
from gateway.models.repository import load_repository
from gateway.preprocess.gpu_decode import DeviceUnavailable, open_photo_decoder
from gateway.preprocess.pipeline import prepare_photo
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


def decoding(repo: Path, photos: list[bytes], seconds: float) -> dict:
    """Photos/s of one thread preparing hot dog inputs, CPU decode and GPU decode."""
    spec = load_repository(repo)["hotdog"]
    try:
        chosen = {"cpu": None, "cuda": open_photo_decoder("cuda")}
    except DeviceUnavailable as exc:
        chosen = {"cpu": None}
        missing = str(exc)
    else:
        missing = None
    figures: dict = {"gpu_decode_missing": missing} if missing else {}
    for device, decoder in chosen.items():
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            prepare_photo(photos[done % len(photos)], spec, max_pixels=40_000_000, decoder=decoder)
            done += 1
        figures[f"{device}_photos_per_s"] = round(done / (time.perf_counter() - started), 1)
    return figures


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


def tensor_bodies(count: int) -> list[bytes]:
    """KServe v2 JSON bodies of one MNIST row each (what a tensor client sends)."""
    rng = np.random.default_rng(5)
    rows = rng.random((count, 1, 1, 28, 28), dtype=np.float32)
    inputs = [
        {"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": row.ravel().tolist()} for row in rows
    ]
    return [json.dumps({"inputs": [one]}).encode() for one in inputs]


async def drive(base_url: str, pki, path: str, bodies: list[bytes], content_type: str, args) -> dict:
    """A closed loop of ``args.clients`` connections for ``args.duration`` seconds after the warm-up."""
    context = client_context(pki.ca_cert, pki.client_cert("app"), pki.client_key("app"))
    connections = [await Connection.open(base_url, context) for _ in range(args.clients)]
    loop = asyncio.get_running_loop()
    start = loop.time() + args.warmup
    end = start + args.duration
    latencies, errors, answered = [], 0, 0

    async def client(connection: Connection, sent: int) -> None:
        nonlocal errors, answered
        while loop.time() < end:
            began = loop.time()
            status, _ = await connection.post(path, bodies[sent % len(bodies)], content_type)
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


def through_gateway(repo: Path, photos: dict[str, list[bytes]], decoders: list[str], args) -> dict:
    """Through one gateway process over mTLS, batching on and off: REST photos (each decode device) and KServe
    tensors; req/s, latency, and the gateway's CPU ms per request."""
    pki = init_pki(Path(tempfile.mkdtemp(prefix="gpu-bench-pki-")))
    runs = [(f"{m}/rest", f"/api/v1/models/{m}/classify", bodies, "image/jpeg") for m, bodies in photos.items()]
    runs.append(("mnist/kserve", "/v2/models/mnist/infer", tensor_bodies(64), "application/json"))
    figures = {}
    for batching in (True, False):
        for decode in decoders:
            env = {"GATEWAY_BATCHING_ENABLED": str(batching).lower(), "GATEWAY_PREPROCESS_DEVICE": decode}
            server = start_gateway(["--pki-dir", str(pki.root), "--model-repo", str(repo)], env=env)
            try:
                for name, path, bodies, content_type in runs:
                    if decode != "cpu" and "rest" not in name:
                        continue  # tensors are not decoded
                    before = server.cpu_seconds()
                    result = asyncio.run(drive(server.base_url, pki, path, bodies, content_type, args))
                    cpu_ms = 1000 * (server.cpu_seconds() - before) / max(result["answered"], 1)
                    result["gateway_cpu_ms_per_request"] = round(cpu_ms, 3)
                    figures[f"{name}/decode_{decode}/batching_{'on' if batching else 'off'}"] = result
            finally:
                server.stop()
    return figures


def cores_per_gpu(alone: dict, gateway: dict) -> dict:
    """How many gateway cores keep one GPU busy: its best images/s alone over the images/s one core serves."""
    answer = {}
    for model in MODELS:
        on_gpu = alone.get(f"{model}/tensorrt") or alone.get(f"{model}/cuda")
        served = gateway.get(f"{model}/rest/decode_cpu/batching_on")
        if on_gpu and served and served["gateway_cpu_ms_per_request"] > 0:
            per_core = 1000 / served["gateway_cpu_ms_per_request"]
            answer[model] = round(max(on_gpu.values()) / per_core, 1)
    return answer


def main(args: argparse.Namespace) -> int:
    probe = DeviceProbe()
    out = args.out / "gpu_bench.json"
    if args.dry_run:
        args.duration, args.warmup, args.clients = 1.0, 0.5, 4
    seconds = 0.2 if args.dry_run else args.seconds
    report: dict = {"dry_run": args.dry_run, "providers": list(probe.providers()), "gpus": probe.gpu_count()}
    report["model_alone"] = model_alone(Path("model_repo"), seconds, probe, args.dry_run)
    hotdog = phone_jpegs(4 if args.dry_run else 16, 300 if args.dry_run else 3000)
    report["decode"] = decoding(Path("model_repo"), hotdog, seconds * 5)
    root = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    try:
        gpu = "cuda" in devices(probe, args.dry_run)
        if not gpu:
            report["gateway_on"] = "cpu (no CUDA provider or GPU here)" if not args.dry_run else "cpu (dry run)"
        repo = gpu_repo(root, args.instances, gpu)
        digits = phone_jpegs(8, 200)
        decoders = ["cpu"] + (["cuda"] if "cuda_photos_per_s" in report["decode"] else [])
        report["gateway"] = through_gateway(repo, {"hotdog": hotdog, "mnist": digits}, decoders, args)
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
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per gateway run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--instances", type=int, default=2, help="instances per GPU of each model")
    parser.set_defaults(handler=main)
