"""`gateway serve` with server.workers = 2, as real processes: shared ports, one /metrics, shared state, shutdown."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
import redis

from gateway.bench.photos import digit_png
from gateway.config import load_settings
from gateway.security.pki import PkiPaths
from gateway.security.tls import client_context
from gateway.supervisor import reserve_port, worker_settings
from gateway.v1 import classifier_pb2, classifier_pb2_grpc
from tests.conftest import MODEL_REPO, RunningGateway, start_gateway, stop_gateway
from tests.redis_server import RedisServer

CLASSIFY = "/api/v1/models/mnist/classify"
CONNECTIONS = 12


def wait_for(check, timeout_s: float = 20.0):
    """Poll ``check`` until it returns something truthy or the time is up (returns as soon as it holds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result


def workers_of(gateway: RunningGateway) -> list[int]:
    """Pids of the parent's live worker processes (spawned by multiprocessing)."""
    pid = gateway.server.process.pid
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children.extend(int(child) for child in (task / "children").read_text().split())
    workers = []
    for child in children:
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
        except OSError:
            continue
    return sorted(workers)


def _socket_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the server side of the loopback connection from ``client_port`` (from /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, remote_port = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        if local_port == server_port and remote_port == client_port:
            return fields[9]
    return None


def owner_of(inode: str, pids: list[int]) -> int | None:
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


class RawConnection:
    """One TLS keep-alive connection whose local port is known (to find which worker accepted it)."""

    def __init__(self, gateway: RunningGateway, identity: str = "app") -> None:
        host, port = gateway.base_url.removeprefix("https://").rsplit(":", 1)
        pki = gateway.pki
        context = client_context(pki.ca_cert, pki.client_cert(identity), pki.client_key(identity))
        self.server_port = int(port)
        self.sock = context.wrap_socket(socket.create_connection((host, self.server_port)), server_hostname=host)
        self.local_port = self.sock.getsockname()[1]
        self._file = self.sock.makefile("rb")

    def post(self, path: str, body: bytes, content_type: str = "image/png", extra: str = "") -> tuple[int, bytes]:
        status, body, _ = self.exchange(path, body, content_type, extra)
        return status, body

    def exchange(self, path: str, body: bytes, content_type: str, extra: str = "") -> tuple[int, bytes, dict]:
        """One POST: (status, body, lower-cased response headers)."""
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n{extra}"
        self.sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status = int(self._file.readline().split()[1])
        headers = {}
        while (line := self._file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, self._file.read(int(headers.get("content-length", 0))), headers

    def close(self) -> None:
        self._file.close()
        self.sock.close()


@pytest.fixture(scope="module")
def photo(heldout_sample) -> bytes:
    return digit_png(heldout_sample[0][0])


def test_workers_share_the_ports_and_metrics_show_every_worker(two_workers, photo) -> None:
    import urllib.request

    gateway, health_port = two_workers
    pids = workers_of(gateway)
    assert len(pids) == 2
    connections = [RawConnection(gateway) for _ in range(CONNECTIONS)]
    try:
        statuses = [connection.post(CLASSIFY, photo)[0] for connection in connections]
        owners = {owner_of(_socket_inode(c.server_port, c.local_port), pids) for c in connections}
    finally:
        for connection in connections:
            connection.close()
    assert statuses == [200] * CONNECTIONS
    assert owners == set(pids), "the kernel spread the connections over both workers"
    with gateway.grpc_channel() as channel:
        answer = classifier_pb2_grpc.ClassifierStub(channel).Classify(
            classifier_pb2.ClassifyRequest(model="mnist", image=photo), timeout=30
        )
    assert answer.label
    text = urllib.request.urlopen(f"http://127.0.0.1:{health_port}/metrics", timeout=10).read().decode()
    answered = [line for line in text.splitlines() if line.startswith("gateway_requests_total{")]
    counted = {line.split('protocol="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1]) for line in answered}
    assert counted == {"rest": CONNECTIONS, "grpc": 1}, "one /metrics sums both workers"


def test_rate_limits_are_one_bucket_for_all_workers(pki: PkiPaths, photo) -> None:
    env = {"GATEWAY_SERVER_WORKERS": "2", "GATEWAY_LIMITS_RATE_PER_S": "0.001", "GATEWAY_LIMITS_BURST": "3"}
    gateway = start_gateway(pki, "--model-repo", str(MODEL_REPO), env=env)
    try:
        statuses = []
        for _ in range(10):  # a new connection each time: both workers see requests
            connection = RawConnection(gateway)
            statuses.append(connection.post(CLASSIFY, photo)[0])
            connection.close()
    finally:
        stop_gateway(gateway)
    assert sorted(statuses) == [200] * 3 + [429] * 7


def test_a_rollout_change_through_one_worker_reaches_every_worker(two_workers, photo) -> None:
    gateway, _ = two_workers
    with gateway.client("operator") as operator:
        response = operator.put(
            "/api/v1/models/mnist/rollout", json={"stable": "1", "canary": "2", "canary_percent": 100}
        )
        assert response.status_code == 200, response.text

    def every_worker_routes_to_the_canary() -> bool:
        versions = set()
        for _ in range(CONNECTIONS):
            connection = RawConnection(gateway)
            status, body = connection.post(CLASSIFY, photo)
            connection.close()
            assert status == 200
            versions.add(body.split(b'"version":"', 1)[1].split(b'"', 1)[0])
        return versions == {b"2"}

    assert wait_for(every_worker_routes_to_the_canary)


def test_a_worker_that_dies_is_replaced(two_workers, photo) -> None:
    gateway, _ = two_workers
    before = workers_of(gateway)
    os.kill(before[0], signal.SIGKILL)
    replaced = wait_for(lambda: (pids := workers_of(gateway)) and len(pids) == 2 and before[0] not in pids and pids)
    assert replaced, "the supervisor did not start a new worker"
    statuses = []
    for _ in range(CONNECTIONS):
        connection = RawConnection(gateway)
        statuses.append(connection.post(CLASSIFY, photo)[0])
        connection.close()
    assert statuses == [200] * CONNECTIONS
    assert "restarting it" in "".join(gateway.output)


def test_sigterm_drains_every_worker_and_the_log_keeps_every_prediction(
    pki, redis_server: RedisServer, tmp_path, photo
) -> None:
    env = {"GATEWAY_SERVER_WORKERS": "2", "GATEWAY_PREDICTIONS_SPOOL_DIR": str(tmp_path / "spool")}
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    gateway = start_gateway(pki, "--model-repo", str(MODEL_REPO), "--redis-url", url, env=env)
    pids = workers_of(gateway)
    connections = [RawConnection(gateway) for _ in range(CONNECTIONS)]
    for connection in connections:
        assert connection.post(CLASSIFY, photo)[0] == 200
    for connection in connections:
        connection.close()
    assert gateway.server.stop() == 0
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()], "every worker exited"
    assert redis.Redis(port=redis_server.port).xlen("predictions:mnist") == CONNECTIONS
    lines = "".join(gateway.output).splitlines()  # every worker's lines, the last of its shutdown too, reached stderr
    assert len([line for line in lines if " INFO gateway.requests: rest mnist " in line]) == CONNECTIONS
    assert len([line for line in lines if line.endswith(" INFO gateway: stopped")]) == len(pids)
    assert lines[-1].endswith(" INFO gateway.supervisor: stopped")


def test_a_retry_on_another_worker_replays_the_first_answer(pki, redis_server: RedisServer, tmp_path, photo) -> None:
    env = {"GATEWAY_SERVER_WORKERS": "2", "GATEWAY_PREDICTIONS_SPOOL_DIR": str(tmp_path / "spool")}
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    gateway = start_gateway(pki, "--model-repo", str(MODEL_REPO), "--redis-url", url, env=env)
    answers, owners = [], set()
    try:
        pids = workers_of(gateway)
        for _ in range(CONNECTIONS):  # each retry on a new connection: both workers get some
            connection = RawConnection(gateway)
            answers.append(connection.exchange(CLASSIFY, photo, "image/png", "Idempotency-Key: photo-42\r\n"))
            owners.add(owner_of(_socket_inode(connection.server_port, connection.local_port), pids))
            connection.close()
    finally:
        assert gateway.server.stop() == 0
    assert owners == set(pids)
    assert [status for status, _, _ in answers] == [200] * CONNECTIONS
    assert len({body.split(b'"request_id":"', 1)[1][:32] for _, body, _ in answers}) == 1
    replayed = [headers.get("idempotent-replayed") for _, _, headers in answers]
    assert replayed[0] in (None, "false") and all(r == "true" for r in replayed[1:]), replayed
    assert redis.Redis(port=redis_server.port).xlen("predictions:mnist") == 1, "run and logged once"


def test_worker_settings_share_ports_and_redis_and_split_the_cores(pki: PkiPaths) -> None:
    settings = load_settings(None, environ={"GATEWAY_SERVER_WORKERS": "2", "GATEWAY_TLS_PKI_DIR": str(pki.root)})
    ports = {"http_port": 9000, "grpc_port": 9001}
    first, second = (worker_settings(settings, i, ports, "unix:///tmp/r.sock") for i in (0, 1))
    for worker in (first, second):
        assert (worker.server.http_port, worker.server.grpc_port, worker.server.workers) == (9000, 9001, 1)
        assert worker.server.reuse_port and worker.predictions.redis_url == "unix:///tmp/r.sock"
        assert worker.runtime.onnx_threads == max(1, (os.cpu_count() or 1) // 2)
    assert first.predictions.spool_dir == settings.predictions.spool_dir
    assert second.predictions.spool_dir == settings.predictions.spool_dir / "worker-1"
    assert first.skew.background_check and not second.skew.background_check  # the same log: one reader


def test_a_reserved_port_takes_no_connections() -> None:
    reserved = reserve_port("127.0.0.1", 0)
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", reserved.getsockname()[1]), timeout=5)
    finally:
        reserved.close()


def test_workers_must_not_be_negative() -> None:
    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match="server.workers"):
        load_settings(None, environ={"GATEWAY_SERVER_WORKERS": "-1", "GATEWAY_TLS_ENABLED": "false"})
