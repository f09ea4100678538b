"""A real Prometheus server (Debian's ``prometheus`` package) for tests, on a free loopback port."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import yaml

from gateway.net import free_port

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
INSTALL_HINT = "Debian's prometheus package is missing: apt-get install -y prometheus (.ci/run does)"


class PrometheusServer:
    """Scrapes ``targets`` under job "gateway" every ``interval_s`` and evaluates ``rule_files`` as often."""

    def __init__(self, directory: Path, targets: list[str], rule_files: list[Path], interval_s: int = 1) -> None:
        assert PROMETHEUS, INSTALL_HINT
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._directory = directory
        config = {
            "global": {"scrape_interval": f"{interval_s}s", "evaluation_interval": f"{interval_s}s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{"job_name": "gateway", "static_configs": [{"targets": targets}]}],
        }
        self._config = directory / "prometheus.yml"
        self._config.write_text(yaml.safe_dump(config))
        self._log = (directory / "prometheus.log").open("wb")
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30) -> None:
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self._config}",
                f"--storage.tsdb.path={self._directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.wait_for(lambda: httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200, timeout_s, "ready")

    def wait_for(self, condition, timeout_s: float, what: str) -> None:
        """Poll ``condition`` (a question to the server) until true; fail with the server's log."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "prometheus exited:\n" + self.log()
            try:
                if condition():
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus: not {what} within {timeout_s} s:\n{self.log()[-3000:]}")

    def query(self, expression: str) -> list[dict]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expression}, timeout=5).json()
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def alerts(self) -> list[dict]:
        return httpx.get(f"{self.url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]

    def firing(self, name: str) -> list[dict]:
        return [a for a in self.alerts() if a["labels"]["alertname"] == name and a["state"] == "firing"]

    def log(self) -> str:
        self._log.flush()
        return (self._directory / "prometheus.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
        self._log.close()
