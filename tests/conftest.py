"""Shared fixtures: a development PKI, a foreign CA, and a real gateway process over mTLS."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from gateway.security.pki import PkiPaths, init_pki
from gateway.security.tls import client_context

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_REPO = REPO_ROOT / "model_repo"
SAMPLE = REPO_ROOT / "tests" / "data" / "mnist_heldout_sample.npz"
BANNER = re.compile(r"gateway: serving (https?)://(\S+):(\d+)")
START_TIMEOUT_S = 60
BODY_LIMIT = 2 * 1024 * 1024


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
    """A `gateway serve` process on a free loopback port."""

    process: subprocess.Popen
    base_url: str
    pki: PkiPaths
    output: list[str] = field(default_factory=list)

    def client(self, identity: str | None = "app", pki: PkiPaths | None = None, **kwargs) -> httpx.Client:
        """An httpx client trusting the gateway's CA and presenting ``identity``'s certificate."""
        own = self.pki
        certs = pki or own
        if identity is None:
            context = client_context(own.ca_cert)
        else:
            context = client_context(own.ca_cert, certs.client_cert(identity), certs.client_key(identity))
        return httpx.Client(base_url=self.base_url, verify=context, timeout=30, **kwargs)

    def assert_alive(self) -> None:
        assert self.process.poll() is None, "gateway died:\n" + "".join(self.output[-50:])

    def peak_rss_kib(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


def start_gateway(pki: PkiPaths, *args: str, env: dict | None = None) -> RunningGateway:
    """Start `gateway serve` and return once it has printed the address it listens on."""
    command = [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--http-port", "0"]
    process = subprocess.Popen(
        [*command, "--pki-dir", str(pki.root), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
    )
    killer = threading.Timer(START_TIMEOUT_S, process.kill)
    killer.start()
    output: list[str] = []
    try:
        for line in process.stdout:
            output.append(line)
            match = BANNER.search(line)
            if match:
                scheme, host, port = match.groups()
                break
        else:
            raise RuntimeError("gateway exited before serving:\n" + "".join(output))
    finally:
        killer.cancel()
    drain = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    drain.start()
    return RunningGateway(process, f"{scheme}://{host}:{port}", pki=pki, output=output)


def stop_gateway(gateway: RunningGateway) -> None:
    gateway.process.terminate()
    try:
        gateway.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        gateway.process.kill()
        gateway.process.wait()


@pytest.fixture(scope="session")
def gateway(pki: PkiPaths) -> Iterator[RunningGateway]:
    running = start_gateway(
        pki, "--model-repo", str(MODEL_REPO), env={"GATEWAY_LIMITS_MAX_BODY_BYTES": str(BODY_LIMIT)}
    )
    yield running
    stop_gateway(running)
