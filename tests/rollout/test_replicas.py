"""Two gateway processes sharing one real Redis: canary share, stickiness, following, switches, refusals."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from gateway.bench.photos import digit_png
from tests.conftest import RunningGateway, start_gateway, stop_gateway
from tests.redis_server import RedisServer, free_port
from tests.rollout.broken_model import add_version, model_repo_with_versions

ROLLOUT = "/api/v1/models/mnist/rollout"
CLASSIFY = "/api/v1/models/mnist/classify"


@pytest.fixture(scope="module")
def replicas(pki, tmp_path_factory, heldout_sample) -> Iterator[tuple[RunningGateway, RunningGateway, object]]:
    redis_server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    redis_server.start()
    repo = model_repo_with_versions(tmp_path_factory.mktemp("repo"), {"2": "1"})
    env = {"GATEWAY_ROLLOUT_GUARD_ENABLED": "false", "GATEWAY_ROLLOUT_SCAN_INTERVAL_S": "0.2"}
    args = ("--model-repo", str(repo), "--redis-url", f"redis://127.0.0.1:{redis_server.port}/0")
    gateways = []
    try:
        for i in range(2):
            spool = {"GATEWAY_PREDICTIONS_SPOOL_DIR": str(tmp_path_factory.mktemp(f"spool{i}"))}
            gateways.append(start_gateway(pki, *args, env={**env, **spool}))
        yield gateways[0], gateways[1], repo
    finally:
        for gateway in gateways:
            stop_gateway(gateway)
        redis_server.stop()


@pytest.fixture(scope="module")
def photo(heldout_sample) -> bytes:
    x, _ = heldout_sample
    return digit_png(x[0])


def wait_for(check, timeout_s: float = 10.0):
    """Poll ``check`` until it returns something truthy (no fixed sleeps: it returns as soon as it holds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result


def put(client: httpx.Client, body: dict) -> dict:
    response = client.put(ROLLOUT, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def classify(client: httpx.Client, photo: bytes, key: str | None = None) -> httpx.Response:
    headers = {"content-type": "image/png", **({"x-routing-key": key} if key else {})}
    return client.post(CLASSIFY, content=photo, headers=headers)


def test_non_operators_get_403_and_bad_changes_400(replicas) -> None:
    a, _, _ = replicas
    with a.client("app") as app, a.client("operator") as ops:
        for method, path in (
            ("GET", ROLLOUT),
            ("PUT", ROLLOUT),
            ("POST", ROLLOUT + "/promote"),
            ("POST", ROLLOUT + "/rollback"),
        ):
            response = app.request(method, path, json={"canary": "2"})
            assert response.status_code == 403 and response.json()["error"]["code"] == "permission_denied"
        for body, message in (
            ({"canary": "7", "canary_percent": 10}, "no loaded version '7'"),
            ({"canary": "2", "canary_percent": 101}, "0-100"),
            ({"canary": "2", "canary_percent": -5}, "0-100"),
        ):
            response = ops.put(ROLLOUT, json=body)
            assert response.status_code == 400 and message in response.json()["error"]["message"]
        response = ops.put(ROLLOUT, json={"stable": "1", "revision": 10_000})
        assert response.status_code == 409


def test_canary_share_stickiness_and_a_change_followed_by_the_other_replica(replicas, photo) -> None:
    a, b, _ = replicas
    with a.client("operator") as ops_a, b.client("operator") as ops_b, a.client() as app_a, b.client() as app_b:
        changed = put(ops_a, {"stable": "1", "canary": "2", "canary_percent": 10, "shadow": None})
        revision = changed["after"]["revision"]
        started = time.monotonic()
        followed = wait_for(lambda: ops_b.get(ROLLOUT).json()["revision"] >= revision, timeout_s=1.0)
        follow_s = time.monotonic() - started
        assert followed, "replica b did not follow within a second"
        print(f"\nreplica b followed a change made through a in {follow_s * 1000:.0f} ms")

        def one(i: int) -> str:
            response = classify(app_a if i % 2 else app_b, photo, key=f"phone-{i}")
            assert response.status_code == 200, response.text
            assert response.headers["x-model-version"] == response.json()["version"]
            return response.json()["version"]

        with ThreadPoolExecutor(8) as pool:
            versions = list(pool.map(one, range(2000)))
        share = versions.count("2") / len(versions)
        print(f"canary share at 10%: {share:.2%} of 2,000 routing keys over two replicas")
        assert 0.09 <= share <= 0.11
        for i in range(0, 2000, 97):  # the same key lands on the same version, on either replica
            assert {one(i), one(i)} == {versions[i]}
        by_cert = {classify(client, photo).json()["version"] for client in (app_a, app_b) for _ in range(5)}
        assert len(by_cert) == 1, "one certificate identity sees one version"
        metrics = a.client().get("/metrics").text
        assert 'gateway_routed_total{arm="canary",model="mnist",version="2"}' in metrics


def test_promote_and_rollback_without_a_failed_request(replicas, photo) -> None:
    a, b, _ = replicas
    with a.client("operator") as ops, a.client() as app_a, b.client() as app_b:
        put(ops, {"stable": "1", "canary": "2", "canary_percent": 50, "shadow": None})
        statuses: list[int] = []
        seen: set[str] = set()
        stop = False

        def hammer(client: httpx.Client, worker: int) -> None:
            i = 0
            while not stop:
                response = classify(client, photo, key=f"w{worker}-{i}")
                statuses.append(response.status_code)
                if response.status_code == 200:
                    seen.add(response.json()["version"])
                i += 1

        with ThreadPoolExecutor(4) as pool:
            workers = [pool.submit(hammer, client, w) for w, client in enumerate((app_a, app_b, app_a, app_b))]
            try:
                for _ in range(3):
                    assert ops.post(ROLLOUT + "/promote").json()["after"]["stable"] == "2"
                    wait_for(lambda: len(statuses) > 20)
                    assert ops.post(ROLLOUT + "/rollback").json()["after"]["stable"] == "1"
                    wait_for(lambda: len(statuses) > 40)
                    put(ops, {"canary": "2", "canary_percent": 50})
            finally:
                stop = True
            for worker in workers:
                worker.result()
        assert statuses and set(statuses) == {200}, f"failed requests during the switches: {set(statuses)}"
        assert seen == {"1", "2"}
        audit = ops.get(ROLLOUT + "/audit", params={"count": 50}).json()["entries"]
        assert [e["action"] for e in audit[-3:]] == ["promote", "rollback", "set"]
        assert all(e["who"] == "operator" and e["time"] > 0 for e in audit[-3:])


def test_two_operators_at_once_lose_no_update(replicas) -> None:
    a, b, _ = replicas
    with a.client("operator") as ops_a, b.client("operator") as ops_b:
        put(ops_a, {"stable": "1", "canary": None, "shadow": None})
        before = ops_a.get(ROLLOUT).json()["revision"]

        def toggle(args: tuple[httpx.Client, int]) -> int:
            client, i = args
            body = {"canary": "2", "canary_percent": i % 100} if i % 2 else {"shadow": "2" if i % 4 == 0 else None}
            return client.put(ROLLOUT, json=body).status_code

        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(toggle, [(ops_a if i % 2 else ops_b, i) for i in range(40)]))
        assert set(codes) == {200}
        audit = ops_a.get(ROLLOUT + "/audit", params={"count": 1000}).json()["entries"]
        mine = [e for e in audit if e["revision"] > before]
        assert [e["revision"] for e in mine] == list(range(before + 1, before + 1 + len(mine)))
        for previous, entry in zip(mine, mine[1:], strict=False):
            assert entry["before"] == previous["after"], "every change was computed on the one before it"


def test_a_corrupt_version_directory_is_refused_while_stable_keeps_serving(replicas, photo) -> None:
    a, b, repo = replicas
    with a.client("operator") as ops, a.client() as app_a, b.client() as app_b, b.client("operator") as ops_b:
        put(ops, {"stable": "1", "canary": None, "shadow": None})
        add_version(repo / "mnist", "3", "corrupt")
        for client in (ops, ops_b):
            assert wait_for(lambda c=client: "3" in c.get("/api/v1/models/mnist").json()["failed_versions"])
            assert client.get("/api/v1/models/mnist").json()["versions"] == ["1", "2"]
        assert all(classify(c, photo).status_code == 200 for c in (app_a, app_b) for _ in range(5))
        response = ops.put(ROLLOUT, json={"canary": "3", "canary_percent": 5})
        assert response.status_code == 400 and "no loaded version '3'" in response.json()["error"]["message"]
        response = ops.post("/api/v1/models/mnist/versions/3/load")
        assert response.status_code == 400 and "does not load" in response.json()["error"]["message"]
        (repo / "mnist" / "3" / "model.onnx").unlink()
        (repo / "mnist" / "3").rmdir()
        assert wait_for(lambda: ops.get("/api/v1/models/mnist").json()["failed_versions"] == {})
