"""The rollout inside one service on a real Redis: arms in the log, shadow agreement, the automatic guard."""

from __future__ import annotations

import asyncio
import os
import socket

import numpy as np
import pytest

from gateway.app import Gateway, build_gateway
from gateway.config import load_settings
from gateway.core.errors import InvalidInput, PermissionDenied
from gateway.core.types import Identity, RowRequest
from tests.redis_server import RedisServer
from tests.rollout.broken_model import add_version, model_repo_with_versions

OPERATOR = Identity("ops", "operator")
APP = Identity("phone", "app")


def make_service(repo, redis_server: RedisServer, tmp_path, **rollout) -> Gateway:
    settings = load_settings(
        overrides={
            "tls": {"enabled": False},
            "models": {"repo": repo},
            "predictions": {"redis_url": f"redis://127.0.0.1:{redis_server.port}/0", "spool_dir": tmp_path / "spool"},
            "rollout": {"guard_enabled": False, "scan_interval_s": 0, **rollout},
        },
        environ={},
    )
    return build_gateway(settings)


async def classify_all(service: Gateway, x: np.ndarray, key: str = "k", **fields) -> list:
    rows = (x.astype(np.float32) / 255.0)[:, np.newaxis]
    return await asyncio.gather(
        *(
            service.plane.classify(RowRequest(model="mnist", row=row, identity=APP, routing_key=f"{key}-{i}", **fields))
            for i, row in enumerate(rows)
        )
    )


def test_guard_rolls_back_a_canary_that_answers_wrongly(redis_server, tmp_path, heldout_sample) -> None:
    x, y = heldout_sample
    repo = model_repo_with_versions(tmp_path / "repo", {"2": "permuted"})
    service = make_service(repo, redis_server, tmp_path, guard_min_feedback=20, guard_min_accuracy=0.9)

    async def scenario() -> None:
        await service.start()
        try:
            with pytest.raises(PermissionDenied):
                await service.rollout.set("mnist", {"canary": "2", "canary_percent": 100}, APP)
            await service.rollout.set("mnist", {"canary": "2", "canary_percent": 100}, OPERATOR)
            answers = await classify_all(service, x[:40])
            assert {a.version for a in answers} == {"2"} and {a.arm for a in answers} == {"canary"}
            assert np.mean([a.label == str(t) for a, t in zip(answers, y[:40], strict=True)]) < 0.2
            await service.monitor.flush_log()
            assert await service.rollout.check("mnist") is None, "no verdict before enough feedback"
            for answer, truth in zip(answers, y[:40], strict=True):
                await service.monitor.record_feedback(answer.request_id, str(truth), APP)
            verdict = await service.rollout.check("mnist")
            assert verdict is not None and verdict.reason == "accuracy"
            state = service.rollout.state("mnist")
            # the change is the guard's, on this replica (this process), not the operator's who set the canary
            guard_here = f"guard@{socket.gethostname()}:{os.getpid()}"
            assert (state.policy.stable, state.policy.canary, state.updated_by) == ("1", None, guard_here)
            audit = await service.rollout.audit("mnist", 10)
            assert audit[-1]["action"] == "guard-rollback" and "live accuracy" in audit[-1]["reason"]
            assert audit[-1]["before"]["canary"] == "2" and audit[-1]["after"]["canary"] is None
            metrics = service.metrics.render().decode()
            assert 'gateway_rollout_guard_rollbacks_total{model="mnist",reason="accuracy",version="2"} 1.0' in metrics
            after = await classify_all(service, x[40:60])
            assert {a.version for a in after} == {"1"}
            await service.monitor.flush_log()
            arms = [r["arm"] for r in redis_server.records("mnist")]
            assert arms.count("canary") == 40 and arms.count("stable") == 20
        finally:
            await service.aclose()

    asyncio.run(scenario())


def test_shadow_gets_copies_after_the_answer_and_a_disagreeing_shadow_is_dropped(
    redis_server, tmp_path, heldout_sample
) -> None:
    x, y = heldout_sample
    repo = model_repo_with_versions(tmp_path / "repo", {"2": "permuted", "3": "1"}, all_versions=True)
    service = make_service(repo, redis_server, tmp_path, guard_min_compared=20)

    async def scenario() -> None:
        await service.start()
        try:
            with pytest.raises(InvalidInput, match="no loaded version '4'"):
                await service.rollout.set("mnist", {"shadow": "4"}, OPERATOR)
            await service.rollout.set("mnist", {"shadow": "3"}, OPERATOR)
            answers = await classify_all(service, x[:30])
            assert {(a.version, a.arm) for a in answers} == {("1", "stable")}
            await asyncio.gather(*service.shadows.in_flight)
            assert (await service.rollout.shadow.agreement("mnist"))["3"] == {
                "compared": 30,
                "agreed": 30,
                "agreement": 1.0,
            }
            assert await service.rollout.check("mnist") is None, "an agreeing shadow stays"
            await service.rollout.set("mnist", {"shadow": "2"}, OPERATOR)
            answers = await classify_all(service, x[30:60])
            assert np.mean([a.label == str(t) for a, t in zip(answers, y[30:60], strict=True)]) > 0.9
            await asyncio.gather(*service.shadows.in_flight)
            verdict = await service.rollout.check("mnist")
            assert verdict is not None and verdict.reason == "agreement"
            assert service.rollout.policy("mnist").shadow is None
            assert 'gateway_shadow_agreement{model="mnist",version="2"} 0.0' in service.metrics.render().decode()
            entries = redis_server_client(redis_server).xrange("shadow:mnist")
            assert len(entries) == 60 and entries[-1][1][b"agree"] == b"0"
        finally:
            await service.aclose()

    asyncio.run(scenario())


def test_a_corrupt_version_never_replaces_a_working_one(redis_server, tmp_path, heldout_sample) -> None:
    x, _ = heldout_sample
    repo = model_repo_with_versions(tmp_path / "repo", {"2": "1"})
    service = make_service(repo, redis_server, tmp_path)

    async def scenario() -> None:
        await service.start()
        try:
            model_dir = repo / "mnist"
            add_version(model_dir, "3", "corrupt")
            await service.registry.sync_versions("mnist")
            described = service.registry.describe_model("mnist")
            assert (
                described["versions"] == ["1", "2"]
                and "ONNX Runtime cannot load it" in described["failed_versions"]["3"]
            )
            with pytest.raises(InvalidInput, match="no loaded version '3'"):
                await service.rollout.set("mnist", {"canary": "3", "canary_percent": 5}, OPERATOR)
            with pytest.raises(InvalidInput, match="does not load"):
                await service.registry.load_version("mnist", "3", OPERATOR)
            assert {a.version for a in await classify_all(service, x[:5])} == {"1"}
            (model_dir / "3" / "model.onnx").unlink()
            add_version(model_dir, "4", "1")  # a good one arrives: latest 2 now selects 2 and 4
            await service.registry.sync_versions("mnist")
            described = service.registry.describe_model("mnist")
            assert described["versions"] == ["1", "2", "4"], "1 stays loaded: it is the stable version"
            assert described["failed_versions"] == {}
            await service.registry.unload_version("mnist", "2", OPERATOR)
            assert service.registry.loaded_versions("mnist") == ["1", "4"]
            await service.registry.load_version("mnist", "2", OPERATOR)
            assert service.registry.loaded_versions("mnist") == ["1", "2", "4"]
        finally:
            await service.aclose()

    asyncio.run(scenario())


def redis_server_client(redis_server: RedisServer):
    import redis

    return redis.Redis(port=redis_server.port)
