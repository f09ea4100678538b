"""Gateway replicas on one machine: one process, then two sharing one port (SO_REUSEPORT) and one Redis.

`gateway bench replicas [--clients 64] [--duration 10]`

Each phase drives the same closed-loop load (mTLS clients uploading MNIST photos, new
connections per phase) at the shared port; the kernel spreads connections across the
listening processes. Every replica exposes its own /metrics on its own health port, so the
bench reports how many requests each replica answered. Throughput can only grow with
replicas while cores are free: on a 2-core machine the load generator takes its share too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import urllib.request
from pathlib import Path

from gateway.bench.batching import DEFAULT_DIGITS, RunResult, make_photos, measure
from gateway.bench.server_process import GatewayProcess, start_gateway
from gateway.monitoring.stores import EmbeddedRedis
from gateway.net import free_port
from gateway.security.pki import PkiPaths, init_pki


def answered_by(health_port: int, model: str) -> int:
    """Requests this replica answered with 200, from its own /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{health_port}/metrics", timeout=10).read().decode()
    pattern = rf'^gateway_requests_total\{{code="200",model="{model}",protocol="rest"[^}}]*\}} (\S+)$'
    return int(sum(float(v) for v in re.findall(pattern, text, re.M)))


def start_replica(
    pki: PkiPaths, args: argparse.Namespace, redis_url: str, http_port: int
) -> tuple[GatewayProcess, int]:
    health_port = free_port()
    server = start_gateway(
        ["--pki-dir", str(pki.root), "--model-repo", str(args.model_repo), "--http-port", str(http_port)],
        env={
            "GATEWAY_SERVER_REUSE_PORT": "true",
            "GATEWAY_SERVER_HEALTH_PORT": str(health_port),
            "GATEWAY_PREDICTIONS_REDIS_URL": redis_url,
        },
    )
    return server, health_port


def main(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="gateway-replicas-"))
    pki = init_pki(work / "pki")
    photos = make_photos(args.digits, 64, args.photo_side)
    redis = EmbeddedRedis(work / "redis" / "shared.db")
    redis_url = f"unix://{redis.socket_path}"
    http_port = free_port()
    replicas: list[tuple[GatewayProcess, int]] = []
    results: dict[int, RunResult] = {}
    shares: dict[int, list[int]] = {}
    try:
        for count in range(1, args.replicas + 1):
            replicas.append(start_replica(pki, args, redis_url, http_port))
            before = [answered_by(port, args.model) for _, port in replicas]
            url = f"https://127.0.0.1:{http_port}"
            results[count] = asyncio.run(
                measure(url, pki, args.model, photos, args.clients, args.warmup, args.duration)
            )
            shares[count] = [answered_by(port, args.model) - b for (_, port), b in zip(replicas, before, strict=True)]
            r = results[count]
            print(
                f"{count} replica(s): {r.rps:7.1f} req/s, p50 {r.p50_ms:6.1f} ms, p99 {r.p99_ms:6.1f} ms, "
                f"errors {r.errors}; answered per replica {shares[count]}",
                flush=True,
            )
    finally:
        for server, _ in replicas:
            server.stop()
        redis.close()
    ratio = results[args.replicas].rps / results[1].rps
    print(f"{args.replicas} replicas / 1: {ratio:.2f}x throughput")
    print(
        json.dumps(
            {
                "clients": args.clients,
                "rps": {n: round(r.rps, 1) for n, r in results.items()},
                "p99_ms": {n: round(r.p99_ms, 1) for n, r in results.items()},
                "answered_per_replica": shares,
                "ratio": round(ratio, 2),
            }
        )
    )
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("replicas", help="1 vs N gateway processes sharing one port and one Redis")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--model-repo", type=Path, default=Path("model_repo"))
    parser.add_argument("--digits", type=Path, default=DEFAULT_DIGITS)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--photo-side", type=int, default=160)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.set_defaults(handler=main)
