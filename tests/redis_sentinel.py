"""A real Redis Sentinel deployment for tests: a master, two replicas and three Sentinels on loopback ports.

Debian's ``redis-server`` and ``redis-sentinel`` (.ci/run installs both). Every server requires a
password (the gateway must pass it on, and never log it). Nothing here waits by sleeping: each step
polls the condition it needs, with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import redis

from gateway.monitoring.prediction_log import stream_name
from gateway.net import free_port

REDIS_SERVER = shutil.which("redis-server")
REDIS_SENTINEL = shutil.which("redis-sentinel")
SERVICE = "gateway-redis"
PASSWORD = "s3nt1nel-Secret-9f2c"
T = TypeVar("T")


def wait_until(check: Callable[[], T], what: str, timeout_s: float = 30.0) -> T:
    """Poll ``check`` until it returns something truthy (ignoring Redis errors meanwhile); fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = check()
        except (redis.RedisError, OSError):
            result = None
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # polling interval, not synchronisation: the loop exits on the condition


class SentinelCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.server_ports = [free_port() for _ in range(3)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.servers: dict[int, subprocess.Popen] = {}
        self.sentinels: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://:{PASSWORD}@{hosts}/{SERVICE}/0"

    def start(self) -> None:
        assert REDIS_SERVER and REDIS_SENTINEL, "needs Debian's redis-server and redis-sentinel (.ci/run installs them)"
        master = self.server_ports[0]
        for port in self.server_ports:
            self._start_server(port, None if port == master else master)
        for port in self.server_ports[1:]:
            wait_until(lambda p=port: self.client(p).info("replication")["master_link_status"] == "up", "replication")
        for port in self.sentinel_ports:
            self._start_sentinel(port, master)
        wait_until(self._sentinels_agree, "the Sentinels to see each other and both replicas")

    def _start_server(self, port: int, replica_of: int | None) -> None:
        data = self.root / f"redis-{port}"
        data.mkdir(exist_ok=True)
        args = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", ""]
        args += ["--appendonly", "yes", "--requirepass", PASSWORD, "--masterauth", PASSWORD]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.servers[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        wait_until(lambda: self.client(port).ping(), f"redis-server on {port}")

    def _start_sentinel(self, port: int, master: int) -> None:
        config = self.root / f"sentinel-{port}.conf"
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.root}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master} 2\n"
            f"sentinel auth-pass {SERVICE} {PASSWORD}\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
            f"sentinel parallel-syncs {SERVICE} 2\n"
        )
        self.sentinels.append(subprocess.Popen([REDIS_SENTINEL, str(config)], stdout=subprocess.DEVNULL))

    def _sentinels_agree(self) -> bool:
        for port in self.sentinel_ports:
            state = redis.Redis(port=port, decode_responses=True).sentinel_master(SERVICE)
            if int(state["num-other-sentinels"]) != 2 or int(state["num-slaves"]) != 2:
                return False
        return True

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=PASSWORD, socket_timeout=2)

    def master_port(self) -> int:
        """The master's port as the first Sentinel sees it."""
        _, port = redis.Redis(port=self.sentinel_ports[0]).sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def kill(self, port: int) -> None:
        self.servers[port].kill()
        self.servers[port].wait(timeout=10)

    def wait_for_new_master(self, old: int, timeout_s: float = 30.0) -> int:
        """The promoted replica's port, once every Sentinel names it and it answers as a master with a replica."""

        def promoted() -> int | None:
            ports = {int(redis.Redis(port=p).sentinel_get_master_addr_by_name(SERVICE)[1]) for p in self.sentinel_ports}
            if len(ports) != 1 or old in ports:
                return None
            (port,) = ports
            info = self.client(port).info("replication")
            return port if info["role"] == "master" and info["connected_slaves"] >= 1 else None

        return wait_until(promoted, "a replica promoted by the Sentinels", timeout_s)

    def records(self, port: int, model: str) -> list[dict]:
        entries = self.client(port).xrange(stream_name(model))
        return [json.loads(fields[b"record"]) for _, fields in entries]

    def stop(self) -> None:
        """Every process ended; one a test froze (SIGSTOP) is resumed first, or it would sit out SIGTERM."""
        for process in [*self.sentinels, *self.servers.values()]:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.terminate()
        for process in [*self.sentinels, *self.servers.values()]:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def running_cluster(root: Path) -> Iterator[SentinelCluster]:
    """Three servers and three Sentinels under ``root``, stopped whatever the test did to them."""
    cluster = SentinelCluster(root)
    cluster.root.mkdir()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
