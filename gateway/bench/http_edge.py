"""`gateway bench http-edge`: the CPU one request costs the HTTP edge, hot route against FastAPI's route.

Builds the gateway (default config, the repository's models) and its REST application, and calls the
application through ASGI in this process: no sockets and no TLS, and a data plane whose ``classify`` and
``infer`` answer at once (everything else of it is real: model specs, routing, metrics). What is timed is
the edge alone: routing, parameters, body, identity, encoding the answer, and FastAPI's request path when
FastAPI serves the route. Each surface runs both ways in alternation, ``--rounds`` times: as served (the
hot route) and with the hot routes switched off (FastAPI's route); the figures are the median CPU time
(this process) per request of each way and their ratio, measured side by side on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from gateway.bench.photos import digit_png
from gateway.core.types import PhotoRequest, Prediction, RowsAnswer, RowsRequest
from gateway.ingress.hot_routes import HotRoutes
from gateway.ingress.http_server import HANG_UP, HangUp


class InstantPlane:
    """The gateway's data plane, but ``classify`` and ``infer`` answer at once (no decode, no model, no log)."""

    def __init__(self, plane: Any, labels: list[str]) -> None:
        self._plane = plane
        self._probabilities = {label: 1.0 / len(labels) for label in labels}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._plane, name)

    async def classify(self, call: PhotoRequest) -> Prediction:
        return Prediction(call.request_id, call.model, "1", "0", self._probabilities, 0.1)

    async def infer(self, rows: RowsRequest) -> RowsAnswer:
        return RowsAnswer(rows.route, np.full((len(rows.rows), 10), 0.1, np.float32))


@dataclass(frozen=True)
class Call:
    name: str
    path: str
    body: bytes
    headers: list[tuple[bytes, bytes]]
    query: bytes = b""


def calls(digit: np.ndarray) -> list[Call]:
    row = (digit.astype(np.float32) / 255.0).astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], "parameters": {"binary_data_size": 3136}}
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    json_infer = json.dumps(
        {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0.5] * 784}]}
    ).encode()
    predict = json.dumps({"instances": [[[[0.5] * 28] * 28]]}).encode()
    photo = digit_png(digit)
    return [
        Call("REST classify (PNG body)", "/api/v1/models/mnist/classify", photo, [(b"content-type", b"image/png")]),
        Call(
            "KServe HTTP binary tensor",
            "/v2/models/mnist/infer",
            header + row,
            [(b"inference-header-content-length", str(len(header)).encode())],
        ),
        Call("KServe HTTP JSON tensor", "/v2/models/mnist/infer", json_infer, [(b"content-type", b"application/json")]),
        Call("TF Serving REST predict", "/v1/models/mnist:predict", predict, [(b"content-type", b"application/json")]),
    ]


async def one_request(app: Callable, call: Call) -> int:
    """One request through ``app``; its status."""
    headers = [(b"host", b"gateway"), (b"content-length", str(len(call.body)).encode()), *call.headers]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": call.path,
        "raw_path": call.path.encode(),
        "root_path": "",
        "query_string": call.query,
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8443),
        "extensions": {"tls": {"peercert": None}, HANG_UP: HangUp()},
        "state": {},
    }
    messages = [{"type": "http.request", "body": call.body, "more_body": False}]
    status = 0

    async def receive() -> dict:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def cpu_us_per_request(app: Callable, call: Call, requests: int) -> float:
    status = await one_request(app, call)
    if status != 200:
        raise RuntimeError(f"{call.name} answered {status}")
    started = time.process_time()
    for _ in range(requests):
        await one_request(app, call)
    return 1e6 * (time.process_time() - started) / requests


async def measure(app: Callable, call: Call, requests: int, rounds: int) -> dict[str, float]:
    hot, plain = [], []
    original = HotRoutes.find
    for _ in range(rounds):
        hot.append(await cpu_us_per_request(app, call, requests))
        HotRoutes.find = lambda self, scope: None  # FastAPI serves every request
        try:
            plain.append(await cpu_us_per_request(app, call, requests))
        finally:
            HotRoutes.find = original
    hot_us, plain_us = statistics.median(hot), statistics.median(plain)
    return {"hot_route_us": round(hot_us, 1), "fastapi_us": round(plain_us, 1), "ratio": round(hot_us / plain_us, 3)}


def main(args: argparse.Namespace) -> int:
    from gateway.app import build_gateway
    from gateway.config import load_settings
    from gateway.ingress.rest import create_app

    settings = load_settings(overrides={"tls": {"enabled": False}, "models": {"repo": str(args.model_repo)}})
    gateway = build_gateway(settings)
    labels = gateway.registry.spec("mnist").labels
    edge = replace(gateway, plane=InstantPlane(gateway.plane, labels))
    app = create_app(edge, mtls=False, limits=settings.limits.parse_limits())
    with np.load(args.digits) as data:
        digit = data["x"][0]
    results = {}
    print(f"{args.requests} requests x {args.rounds} rounds per way; load average {os.getloadavg()[0]:.2f}")
    print(f"{'surface':<28}{'hot route us':>14}{'FastAPI us':>12}{'ratio':>8}")
    for call in calls(digit):
        results[call.name] = row = asyncio.run(measure(app, call, args.requests, args.rounds))
        print(f"{call.name:<28}{row['hot_route_us']:>14.1f}{row['fastapi_us']:>12.1f}{row['ratio']:>8.2f}", flush=True)
    gateway.preprocess_pool.shutdown()
    print(f"load average after the run: {os.getloadavg()[0]:.2f}")
    print(json.dumps({"requests": args.requests, "rounds": args.rounds, "surfaces": results}))
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("http-edge", help="CPU per request of the HTTP edge: hot routes vs FastAPI's")
    parser.add_argument("--model-repo", type=Path, default=Path("model_repo"))
    parser.add_argument("--digits", type=Path, default=Path("tests/data/mnist_heldout_sample.npz"))
    parser.add_argument("--requests", type=int, default=2000, help="requests per way and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.set_defaults(handler=main)
