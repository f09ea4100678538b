"""Sentinel URLs validated at start-up (errors name the key, never the password); writes confirmed by replicas.

The replica tests run against a real Sentinel deployment (tests/redis_sentinel.py) whose replicas are
frozen with SIGSTOP: the master alone then holds a write, which a failover would lose.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import ConfigError, PredictionLogSettings
from gateway.core.errors import Unavailable
from gateway.monitoring.stores import SharedRedis, open_prediction_stores
from gateway.redis_link import RedisUrlError, parse_sentinel_url, redacted
from gateway.rollout.policy import RolloutPolicy
from gateway.rollout.store import RolloutStore, state_key
from tests.redis_sentinel import SentinelCluster, running_cluster, wait_until


def test_a_sentinel_url_names_its_sentinels_service_db_and_password() -> None:
    address = parse_sentinel_url("redis+sentinel://:pw%40x@10.0.0.1:26379,[::1]:26380/gateway/3")
    assert address.sentinels == (("10.0.0.1", 26379), ("::1", 26380))
    assert (address.service, address.db, address.password, address.username) == ("gateway", 3, "pw@x", None)
    assert parse_sentinel_url("redis+sentinel://h:1/svc").db == 0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://:hunter2@h:26379", "must end in /service_name"),
        ("redis+sentinel://:hunter2@h/svc", "sentinel 'h' in"),
        ("redis+sentinel://:hunter2@h:0/svc", "port 1-65535"),
        ("redis+sentinel://:hunter2@h:1,h:x/svc", "sentinel 'h:x'"),
        ("redis+sentinel://:hunter2@h:1/svc/zero", "the db in"),
        ("redis+sentinel://:hunter2@h:1/svc?ssl=1", "query parameters"),
        ("mongodb://:hunter2@h:1/svc", "must start with redis://"),
        ("rediss+sentinel://:hunter2@h:1/svc", "must start with redis://"),
    ],
)
def test_a_bad_url_stops_the_start_naming_the_key_and_hiding_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        PredictionLogSettings(redis_url=url).validate()
    assert str(raised.value).startswith("predictions.redis_url: ") and message in str(raised.value)
    assert "hunter2" not in str(raised.value) and "***" in str(raised.value)


def test_writes_wait_for_one_replica_by_default_with_sentinel_only() -> None:
    assert PredictionLogSettings(redis_url="redis+sentinel://h:1/svc").wait_replicas == 1
    assert PredictionLogSettings(redis_url="redis://h:1/0").wait_replicas == 0
    assert PredictionLogSettings(redis_url="redis://h:1/0", redis_wait_replicas=2).wait_replicas == 2
    with pytest.raises(ConfigError, match="predictions.redis_wait_replicas"):
        PredictionLogSettings(redis_wait_replicas=-2).validate()
    with pytest.raises(RedisUrlError):
        parse_sentinel_url("redis://h:1/0")
    assert redacted("redis://u:secret@h:1/0") == "redis://u:***@h:1/0"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    with running_cluster(tmp_path / "sentinel") as running:
        yield running


def freeze_replicas(cluster: SentinelCluster, sig: signal.Signals) -> None:
    master = cluster.master_port()
    for port, process in cluster.servers.items():
        if port != master:
            process.send_signal(sig)


def test_log_records_only_the_master_holds_are_spooled_and_written_once_when_replicas_catch_up(
    cluster: SentinelCluster, tmp_path: Path
) -> None:
    settings = PredictionLogSettings(redis_url=cluster.url, spool_dir=tmp_path / "spool", redis_wait_timeout_ms=200)
    master = cluster.master_port()

    async def scenario() -> tuple[int, int]:
        stores = open_prediction_stores(settings)
        log = stores.log
        log.start()
        freeze_replicas(cluster, signal.SIGSTOP)
        for i in range(10):
            log.record({"model": "mnist", "request_id": f"r{i}", "label": "1"})
        await log.flush()
        spooled_while_frozen = log.spooled  # written to the master, not confirmed: kept in the spool
        freeze_replicas(cluster, signal.SIGCONT)
        deadline = asyncio.get_running_loop().time() + 30
        while log.spooled:
            assert asyncio.get_running_loop().time() < deadline, "the spool was not replayed"
            await asyncio.sleep(0.05)  # the writer retries on its own schedule; this only polls
        skipped = log.repeats_skipped
        await stores.aclose()
        return spooled_while_frozen, skipped

    spooled, skipped = asyncio.run(scenario())
    assert spooled == 10
    assert skipped >= 10  # the replay found the master's copies: not written again
    assert sorted(r["request_id"] for r in cluster.records(master, "mnist")) == [f"r{i}" for i in range(10)]
    replica = next(port for port in cluster.server_ports if port != master)
    wait_until(lambda: len(cluster.records(replica, "mnist")) == 10, "the replica to hold the records")


def test_a_rollout_change_the_replicas_do_not_confirm_is_not_reported_done(cluster: SentinelCluster) -> None:
    shared = SharedRedis(PredictionLogSettings(redis_url=cluster.url, redis_wait_timeout_ms=200))

    async def scenario() -> None:
        store = RolloutStore(shared.connect, shared.confirm)
        await store.ensure("mnist", RolloutPolicy(stable="1"))
        changed = await store.change("mnist", lambda state: RolloutPolicy(stable="2"), who="op", action="set")
        assert changed.after.revision == 2
        freeze_replicas(cluster, signal.SIGSTOP)
        try:
            with pytest.raises(Unavailable, match="not yet on its replicas"):
                await store.change("mnist", lambda state: RolloutPolicy(stable="3"), who="op", action="set")
        finally:
            freeze_replicas(cluster, signal.SIGCONT)
        await store.aclose()

    asyncio.run(scenario())
    stored = json.loads(cluster.client(cluster.master_port()).get(state_key("mnist")))
    assert stored["revision"] == 3  # on the master; the caller was told it may not survive a failover
