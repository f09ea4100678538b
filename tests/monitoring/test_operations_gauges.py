"""The operations gauges read at scrape time: TLS expiry, the prediction log's spool and losses, Redis up."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import redis.asyncio as aioredis
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import TlsSettings
from gateway.monitoring.metrics import GatewayMetrics
from gateway.monitoring.prediction_log import PredictionLog
from gateway.monitoring.redis_probe import RedisProbe
from gateway.security.pki import init_pki, issue_server, write_crl
from gateway.security.tls_reload import TlsMaterial
from tests.redis_server import RedisServer, free_port


def samples(metrics: GatewayMetrics) -> dict[str, float]:
    text = metrics.render().decode()
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples if not s.labels}


def test_the_certificate_and_crl_expiry_follow_the_files_in_force(tmp_path: Path) -> None:
    pki = init_pki(tmp_path / "pki")
    write_crl(pki, days=3)
    settings = TlsSettings(pki_dir=pki.root, crl=pki.crl)
    material = TlsMaterial(settings)
    metrics = GatewayMetrics()
    metrics.operations.watch_tls(material)

    def not_after() -> float:
        return x509.load_pem_x509_certificate(pki.server_cert.read_bytes()).not_valid_after_utc.timestamp()

    before = samples(metrics)
    crl_next = x509.load_pem_x509_crl(pki.crl.read_bytes()).next_update_utc.timestamp()
    assert before["gateway_tls_certificate_expiry_timestamp_seconds"] == not_after()
    assert before["gateway_tls_crl_next_update_timestamp_seconds"] == crl_next
    assert abs(crl_next - (dt.datetime.now(dt.UTC).timestamp() + 3 * 86400)) < 120

    issue_server(pki, ["localhost", "127.0.0.1"], days=10)  # a rotation: the gauge follows the reload
    write_crl(pki, days=7)
    assert material.reload_if_changed()
    after = samples(metrics)
    expiry = "gateway_tls_certificate_expiry_timestamp_seconds"
    assert after[expiry] == not_after() < before[expiry]
    assert after["gateway_tls_crl_next_update_timestamp_seconds"] > crl_next


def test_without_a_crl_no_crl_gauge_is_exported(tmp_path: Path) -> None:
    pki = init_pki(tmp_path / "pki")
    metrics = GatewayMetrics()
    metrics.operations.watch_tls(TlsMaterial(TlsSettings(pki_dir=pki.root)))
    exported = samples(metrics)
    assert "gateway_tls_certificate_expiry_timestamp_seconds" in exported
    assert "gateway_tls_crl_next_update_timestamp_seconds" not in exported


def test_spooled_and_lost_records_are_exported_as_the_log_counts_them(tmp_path: Path) -> None:
    dead_port = free_port()  # nothing listens: every write fails

    def connect() -> aioredis.Redis:
        return aioredis.Redis(port=dead_port, socket_connect_timeout=1)

    async def scenario() -> tuple[dict[str, float], dict[str, float]]:
        spooling = PredictionLog(connect, tmp_path / "spool" / "predictions.jsonl")
        losing = PredictionLog(connect, tmp_path / "full-disk" / "predictions.jsonl")
        (tmp_path / "full-disk" / "predictions.jsonl").mkdir()  # the spool cannot be written
        exported = []
        for log in (spooling, losing):
            metrics = GatewayMetrics()
            metrics.operations.watch_prediction_log(log)
            log.start()
            for i in range(5):
                log.record({"model": "mnist", "request_id": f"r{i}", "version": "1", "label": "1"})
            await log.flush()
            exported.append(samples(metrics))
            await log.aclose(timeout_s=1)
        return exported[0], exported[1]

    spooling, losing = asyncio.run(scenario())
    assert spooling["gateway_prediction_log_spooled_records"] == 5
    assert spooling["gateway_prediction_log_lost_records_total"] == 0
    assert losing["gateway_prediction_log_spooled_records"] == 0
    assert losing["gateway_prediction_log_lost_records_total"] == 5


def test_the_redis_probe_reports_a_stopped_and_restarted_server(redis_server: RedisServer) -> None:
    metrics = GatewayMetrics()

    async def scenario() -> list[float]:
        probe = RedisProbe(
            lambda: aioredis.Redis(port=redis_server.port, socket_timeout=1, socket_connect_timeout=1),
            lambda up: metrics.redis_up.set(int(up)),
        )
        seen = []
        for action in (None, redis_server.stop, redis_server.start):
            if action is not None:
                action()
            await probe.probe()
            seen.append(samples(metrics)["gateway_redis_up"])
        await probe.aclose()
        return seen

    assert asyncio.run(scenario()) == [1.0, 0.0, 1.0]
