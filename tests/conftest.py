"""Shared fixtures: a development PKI, a foreign CA, and a real gateway process over mTLS."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from gateway.bench.server_process import GatewayProcess
from gateway.bench.server_process import start_gateway as start_gateway_process
from gateway.models.repository import load_model_spec
from gateway.security.pki import PkiPaths, init_pki
from gateway.security.tls import client_context
from tests.redis_server import RedisServer, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_REPO = REPO_ROOT / "model_repo"
SAMPLE = REPO_ROOT / "tests" / "data" / "mnist_heldout_sample.npz"
BODY_LIMIT = 2 * 1024 * 1024
MNIST_STABLE = load_model_spec(MODEL_REPO / "mnist").initial_stable or "1"
"""The version the shipped mnist config makes stable: what a gateway on ``MODEL_REPO`` answers with."""


def version_one_config(config: str) -> str:
    """The shipped mnist config for a copy that holds version 1 and the versions a test adds: version 1
    stable, the latest 2 loaded (besides the stable one), whatever the shipped config says."""
    config = re.sub(r'(key: "gateway.stable_version"\s*value: \{ string_value: )"\d+"', r'\1"1"', config)
    return re.sub(r"latest: \{ num_versions: \d+ \}", "latest: { num_versions: 2 }", config)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return init_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def foreign_pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    """A second, unrelated CA whose client certificates the gateway must refuse."""
    return init_pki(tmp_path_factory.mktemp("foreign-pki"))


@pytest.fixture(scope="session")
def heldout_sample() -> tuple[np.ndarray, np.ndarray]:
    with np.load(SAMPLE) as data:
        return data["x"], data["y"]


@dataclass
class RunningGateway:
    """A `gateway serve` process on a free loopback port, with the PKI its clients use."""

    server: GatewayProcess
    pki: PkiPaths

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def output(self) -> list[str]:
        return self.server.output

    def grpc_channel(self, identity: str | None = "app", pki: PkiPaths | None = None) -> grpc.Channel:
        """A gRPC channel trusting the gateway's CA, presenting ``identity`` from ``pki`` (default: ours)."""
        certs = pki or self.pki
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.pki.ca_cert.read_bytes(),
            private_key=certs.client_key(identity).read_bytes() if identity else None,
            certificate_chain=certs.client_cert(identity).read_bytes() if identity else None,
        )
        return grpc.secure_channel(self.server.grpc_target, credentials)

    def client(self, identity: str | None = "app") -> httpx.Client:
        """An httpx client trusting the gateway's CA and presenting ``identity``'s certificate."""
        pki = self.pki
        if identity is None:
            context = client_context(pki.ca_cert)
        else:
            context = client_context(pki.ca_cert, pki.client_cert(identity), pki.client_key(identity))
        return httpx.Client(base_url=self.base_url, verify=context, timeout=30)

    def assert_alive(self) -> None:
        assert self.server.alive(), "gateway died:\n" + "".join(self.output[-50:])


def start_gateway(pki: PkiPaths, *args: str, env: dict | None = None) -> RunningGateway:
    return RunningGateway(start_gateway_process(["--pki-dir", str(pki.root), *args], env=env, cwd=REPO_ROOT), pki)


def start_gateway_on_redis(
    pki: PkiPaths, redis_server: RedisServer, spool_dir: Path, env: dict[str, str] | None = None
) -> RunningGateway:
    """A gateway logging to ``redis_server``, spooling into ``spool_dir``; ``env``: more GATEWAY_* settings."""
    return start_gateway(
        pki,
        "--model-repo",
        str(MODEL_REPO),
        "--redis-url",
        f"redis://127.0.0.1:{redis_server.port}/0",
        env={"GATEWAY_PREDICTIONS_SPOOL_DIR": str(spool_dir), **(env or {})},
    )


def stop_gateway(gateway: RunningGateway) -> None:
    gateway.server.stop()


def refused_start(pki: PkiPaths, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``gateway serve`` with ``args``, which must stop at start-up with status 2; its output, to say why."""
    command = [sys.executable, "-m", "gateway.cli", "serve", "--http-port", "0", "--grpc-port", "0"]
    result = subprocess.run(
        [*command, "--pki-dir", str(pki.root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    return result


@pytest.fixture
def two_workers(pki: PkiPaths) -> Iterator[tuple[RunningGateway, int]]:
    """A gateway of two worker processes (server.workers = 2) and the port of its supervisor's health server."""
    health_port = free_port()
    env = {"GATEWAY_SERVER_WORKERS": "2", "GATEWAY_SERVER_HEALTH_PORT": str(health_port)}
    running = start_gateway(pki, "--model-repo", str(MODEL_REPO), env=env)
    yield running, health_port
    stop_gateway(running)


@contextlib.contextmanager
def gateway_with(pki: PkiPaths, env: dict[str, str]) -> Iterator[RunningGateway]:
    """A gateway on the shipped repository with these GATEWAY_* settings; still alive when the caller is done
    (a test that killed a worker fails here), and stopped whatever happened."""
    running = start_gateway(pki, "--model-repo", str(MODEL_REPO), env=env)
    try:
        yield running
        running.assert_alive()
    finally:
        stop_gateway(running)


SLOW_BATCH_DELAY_US = 3_000_000


def slow_batching_repo(root: Path, queue_policy: str = "") -> Path:
    """The real mnist model, but a batch waits up to 3 s to fill: a lone request sits in the batcher's queue.

    ``queue_policy``: the body of a Triton ``default_queue_policy`` block (max_queue_size, default timeout).
    """
    repo = root / "slow-repo"
    shutil.copytree(MODEL_REPO / "mnist", repo / "mnist")
    config = repo / "mnist" / "config.pbtxt"
    batching = f"max_queue_delay_microseconds: {SLOW_BATCH_DELAY_US}"
    if queue_policy:
        batching += f"\n  default_queue_policy {{ {queue_policy} }}"
    text = re.sub(r"max_queue_delay_microseconds: \d+", batching, config.read_text())
    config.write_text(text.replace("preferred_batch_size: [ 16, 32 ]", ""))
    return repo


@pytest.fixture
def slow_batching_gateway(pki: PkiPaths, tmp_path: Path) -> Iterator[RunningGateway]:
    """A gateway whose mnist batches wait up to 3 s to fill (see ``slow_batching_repo``)."""
    running = start_gateway(pki, "--model-repo", str(slow_batching_repo(tmp_path)))
    yield running
    stop_gateway(running)


def metrics(gateway: RunningGateway) -> str:
    """The gateway's /metrics page now."""
    with gateway.client() as client:
        return client.get("/metrics").text


def executed(gateway: RunningGateway, model: str = "mnist", version: str = MNIST_STABLE) -> tuple[float, float]:
    """(batches run, requests run in them) of one model version, from the batcher's histogram on /metrics."""
    text = metrics(gateway)
    labels = f'{{model="{model}",version="{version}"}}'
    found = [
        re.search(rf"^gateway_batch_size_{kind}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
        for kind in ("count", "sum")
    ]
    count, total = (float(match.group(1)) if match else 0.0 for match in found)
    return count, total


def requests_counted(gateway: RunningGateway, protocol: str, code: str, model: str = "mnist") -> float:
    """How many requests the gateway answered with ``code`` on ``protocol`` (its own request counter)."""
    pattern = rf'^gateway_requests_total{{code="{code}",model="{model}",protocol="{protocol}",version="[^"]*"}} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, metrics(gateway), re.MULTILINE))


@pytest.fixture(scope="session")
def gateway(pki: PkiPaths) -> Iterator[RunningGateway]:
    running = start_gateway(
        pki, "--model-repo", str(MODEL_REPO), env={"GATEWAY_LIMITS_MAX_BODY_BYTES": str(BODY_LIMIT)}
    )
    yield running
    stop_gateway(running)


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    if server.process.poll() is None:
        server.stop()
