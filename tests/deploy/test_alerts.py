"""deploy/prometheus/alerts.yml: promtool's unit tests of every rule, and a real Prometheus that scrapes a
live gateway's health port and fires the Redis and spool alerts when the gateway's Redis is killed."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gateway.net import free_port
from gateway.security.pki import PkiPaths
from tests.conftest import REPO_ROOT, RunningGateway, start_gateway_on_redis, stop_gateway
from tests.deploy.prometheus_server import INSTALL_HINT, PROMTOOL, PrometheusServer
from tests.redis_server import RedisServer

ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
UNIT_TESTS = Path(__file__).with_name("alerts_test.yml")
PHOTO = (REPO_ROOT / "docs" / "examples" / "seven.jpg").read_bytes()


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_the_rules_and_the_example_config_are_valid() -> None:
    assert PROMTOOL, INSTALL_HINT
    for command in (["check", "rules", str(ALERTS)], ["check", "config", str(ALERTS.with_name("prometheus.yml"))]):
        checked = subprocess.run([PROMTOOL, *command], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_passes_its_promtool_unit_tests() -> None:
    assert PROMTOOL, INSTALL_HINT
    result = subprocess.run([PROMTOOL, "test", "rules", str(UNIT_TESTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_unit_tests_that_see_it_fire() -> None:
    """A rule added without a case in alerts_test.yml would pass the promtool run untested."""
    cases = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fired = {
        check["alertname"] for case in cases for check in case.get("alert_rule_test", []) if check.get("exp_alerts")
    }
    assert fired == {rule["alert"] for rule in rules()}


def _rules_without_hold(directory: Path) -> Path:
    """The shipped rules with every ``for:`` set to 0s: the expressions under test are unchanged, and the
    test need not wait out holds of minutes (promtool's unit tests above check the holds)."""
    path = directory / "alerts.yml"
    path.write_text(re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 0s", ALERTS.read_text()))
    return path


@pytest.fixture
def watched_gateway(
    pki: PkiPaths, redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[RunningGateway, PrometheusServer]]:
    health_port = free_port()
    gateway = start_gateway_on_redis(
        pki, redis_server, tmp_path / "spool", env={"GATEWAY_SERVER_HEALTH_PORT": str(health_port)}
    )
    prometheus = PrometheusServer(tmp_path, [f"127.0.0.1:{health_port}"], [_rules_without_hold(tmp_path)])
    try:
        prometheus.start()
        yield gateway, prometheus
    finally:
        prometheus.stop()
        stop_gateway(gateway)


def test_killing_redis_fires_the_redis_and_spool_alerts_in_a_real_prometheus(
    watched_gateway: tuple[RunningGateway, PrometheusServer], redis_server: RedisServer
) -> None:
    gateway, prometheus = watched_gateway
    with gateway.client("app") as client:

        def classify() -> None:
            answer = client.post("/api/v1/models/mnist/classify", content=PHOTO, headers={"content-type": "image/jpeg"})
            assert answer.status_code == 200, answer.text  # the answer never waits on the log

        classify()
        prometheus.wait_for(lambda: prometheus.query("gateway_redis_up == 1"), 30, "scraping a healthy gateway")
        assert prometheus.query('up{job="gateway"} == 1')
        assert not prometheus.firing("GatewayRedisUnreachable")
        assert not prometheus.firing("GatewayPredictionLogSpooling")

        redis_server.stop()

        def spooling_fires() -> bool:
            classify()  # records keep coming while Redis is down: the spool grows
            return bool(prometheus.firing("GatewayPredictionLogSpooling"))

        prometheus.wait_for(lambda: prometheus.firing("GatewayRedisUnreachable"), 30, "firing GatewayRedisUnreachable")
        prometheus.wait_for(spooling_fires, 30, "firing GatewayPredictionLogSpooling")
        spooled = prometheus.query("gateway_prediction_log_spooled_records")
        assert float(spooled[0]["value"][1]) > 0

        redis_server.start()
        prometheus.wait_for(lambda: not prometheus.firing("GatewayRedisUnreachable"), 30, "resolving the Redis alert")
    gateway.assert_alive()
