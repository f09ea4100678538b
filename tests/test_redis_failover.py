"""A gateway on Redis Sentinel loses its master under load: nothing fails, nothing is lost or doubled.

Real processes throughout: three redis-servers (a master, two replicas), three redis-sentinels, one
``gateway serve`` with ``predictions.redis_url = redis+sentinel://...`` (so the prediction log,
rollout state and rate limits all live there), four clients classifying photos over mTLS while the
master is SIGKILLed.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator

import httpx
import pytest

from gateway.bench.photos import digit_png
from gateway.security.pki import PkiPaths
from tests.conftest import RunningGateway, metrics, start_gateway, stop_gateway
from tests.redis_sentinel import PASSWORD, SentinelCluster, running_cluster, wait_until
from tests.rollout.broken_model import model_repo_with_versions

ROLLOUT = "/api/v1/models/mnist/rollout"
CLASSIFY = "/api/v1/models/mnist/classify"
CLIENTS = 4


@pytest.fixture
def cluster(tmp_path) -> Iterator[SentinelCluster]:
    with running_cluster(tmp_path / "sentinel") as running:
        yield running


@pytest.fixture
def gateway_on_sentinel(pki: PkiPaths, cluster: SentinelCluster, tmp_path) -> Iterator[RunningGateway]:
    repo = model_repo_with_versions(tmp_path / "repo", {"2": "1"})
    env = {
        "GATEWAY_PREDICTIONS_SPOOL_DIR": str(tmp_path / "spool"),
        "GATEWAY_ROLLOUT_GUARD_ENABLED": "false",
        "GATEWAY_LIMITS_RATE_PER_S": "100000",
        "GATEWAY_LIMITS_BURST": "100000",
    }
    running = start_gateway(pki, "--model-repo", str(repo), "--redis-url", cluster.url, env=env)
    yield running
    stop_gateway(running)


class Load:
    """CLIENTS threads classifying the same photo in a loop until stopped; every answer kept."""

    def __init__(self, gateway: RunningGateway, photo: bytes) -> None:
        self._gateway = gateway
        self._photo = photo
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.answers: list[tuple[int, str]] = []
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def _run(self) -> None:
        with self._gateway.client() as client:
            while not self._stop.is_set():
                try:
                    response = client.post(CLASSIFY, content=self._photo, headers={"content-type": "image/png"})
                    answer = (response.status_code, response.json().get("request_id", response.text))
                except httpx.HTTPError as exc:
                    answer = (0, repr(exc))
                with self._lock:
                    self.answers.append(answer)

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def failovers(gateway: RunningGateway) -> float:
    found = re.search(r"^gateway_redis_failovers_total (\S+)$", metrics(gateway), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_killing_the_master_under_load_fails_no_request_and_loses_or_doubles_no_record(
    gateway_on_sentinel: RunningGateway, cluster: SentinelCluster, heldout_sample
) -> None:
    gateway = gateway_on_sentinel
    x, _ = heldout_sample
    with gateway.client("operator") as ops:
        changed = ops.put(ROLLOUT, json={"stable": "1", "canary": "2", "canary_percent": 30})
        assert changed.status_code == 200, changed.text
        before = ops.get(ROLLOUT).json()
    assert before["revision"] >= 2 and before["canary"] == "2" and before["canary_percent"] == 30
    old_master = cluster.master_port()
    assert failovers(gateway) == 0

    with Load(gateway, digit_png(x[0])) as load:
        wait_until(lambda: load.count() >= 40, "answers before the kill")
        cluster.kill(old_master)
        new_master = cluster.wait_for_new_master(old_master)
        wait_until(lambda: failovers(gateway) == 1, "the gateway to follow the new master")
        after_failover = load.count()
        wait_until(lambda: load.count() >= after_failover + 40, "answers after the failover")

    failed = [answer for answer in load.answers if answer[0] != 200]
    assert not failed, f"{len(failed)} of {len(load.answers)} requests failed: {failed[:5]}"
    answered = [request_id for _, request_id in load.answers]
    # Every answer has exactly one record on the new master: spooled during the outage, replayed once.
    records = wait_until(
        lambda: (found := cluster.records(new_master, "mnist")) and len(found) >= len(answered) and found,
        "every record on the new master",
        timeout_s=60,
    )
    assert sorted(r["request_id"] for r in records) == sorted(answered)
    assert len({r["log_id"] for r in records}) == len(records)

    with gateway.client("operator") as ops:
        assert ops.get(ROLLOUT).json() == before
    stored = json.loads(cluster.client(new_master).get("rollout:mnist"))
    assert stored["revision"] == before["revision"] and stored["policy"]["canary_percent"] == 30
    gateway.assert_alive()
    output = "".join(gateway.output)
    assert re.search(
        rf"Redis FAILOVER: master of 'gateway-redis' moved from 127.0.0.1:{old_master} to 127.0.0.1:{new_master}",
        output,
    )
    assert PASSWORD not in output
