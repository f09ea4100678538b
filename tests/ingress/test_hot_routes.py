"""The hot routes in front of FastAPI answer every request exactly as FastAPI's own routes do.

Each request is sent twice to one application: once as it comes (the hot route serves it when it can), and
once with the hot routes switched off (``HotRoutes.find`` answering None), so that FastAPI's route serves it.
The answers must be the same but for the request ids and latencies, which differ per request.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gateway.app import build_gateway
from gateway.bench.photos import digit_png
from gateway.config import load_settings
from gateway.core.limits import ParseLimits
from gateway.ingress import rest_classify
from gateway.ingress.hot_routes import HotRoutes
from gateway.ingress.http_server import HANG_UP, HangUp
from gateway.ingress.rest import create_app
from tests.conftest import MODEL_REPO

CLASSIFY = "/api/v1/models/mnist/classify"
IDS = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def client(heldout_sample) -> Iterator[TestClient]:
    settings = load_settings(overrides={"tls": {"enabled": False}, "models": {"repo": MODEL_REPO}}, environ={})
    gateway = build_gateway(settings)
    app = create_app(gateway, mtls=False, limits=ParseLimits(body_max_bytes=64 * 1024))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
    gateway.preprocess_pool.shutdown()


def comparable(response) -> tuple:
    """Status, the headers that are not per request, and the body with ids and latencies taken out."""
    headers = {k: v for k, v in response.headers.items() if k not in ("x-request-id", "content-length", "date")}
    try:
        body = response.json()
    except ValueError:  # KServe's binary answer: JSON header and raw tensor bytes
        body = response.content
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in ("request_id", "latency_ms")}
    return response.status_code, headers, IDS.sub("<id>", json.dumps(body, sort_keys=True, default=str))


def both_ways(client: TestClient, served_by_hot_route: bool | None = None, **request) -> tuple:
    """The answer through the hot route and through FastAPI's route; asserts they are the same."""
    calls = []
    original = HotRoutes.serve

    async def counting(*args):
        calls.append(1)
        await original(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HotRoutes, "serve", staticmethod(counting))
        hot = client.request(**request)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HotRoutes, "find", lambda self, scope: None)
        plain = client.request(**request)
    assert comparable(hot) == comparable(plain)
    if served_by_hot_route is not None:
        assert bool(calls) == served_by_hot_route, "served by the hot route" if calls else "passed on to FastAPI"
    return comparable(hot)


@pytest.fixture(scope="module")
def digit(heldout_sample) -> bytes:
    return digit_png(heldout_sample[0][0])


@pytest.mark.parametrize(
    ("query", "headers", "hot"),
    [
        ("", {}, True),
        ("?version=1", {}, True),
        ("?version=2&version=1", {}, True),
        ("?label=stable&unknown=x", {}, True),
        ("", {"x-priority": "1", "x-request-timeout-ms": "600000", "x-routing-key": "k" * 256}, True),
        ("?version=", {}, False),
        ("?version=1%0A", {}, False),
        ("?version=latest", {}, False),
        ("?label=Canary", {}, False),
        ("", {"x-priority": "0"}, False),
        ("", {"x-priority": "101"}, False),
        ("", {"x-priority": "05"}, False),
        ("", {"x-priority": "+5"}, False),
        ("", {"x-priority": "high"}, False),
        ("", {"x-request-timeout-ms": "600001"}, False),
        ("", {"x-request-timeout-ms": "1.5"}, False),
        ("", {"x-routing-key": "k" * 257}, False),
        ("?version=9", {}, True),
        ("", {"idempotency-key": "not a key!"}, True),
    ],
)
def test_classify_parameters_are_parsed_as_fastapi_parses_them(
    client: TestClient, digit: bytes, query: str, headers: dict, hot: bool
) -> None:
    headers = {"content-type": "image/png", **headers}
    both_ways(client, hot, method="POST", url=CLASSIFY + query, content=digit, headers=headers)


def test_an_idempotent_retry_is_replayed_whichever_path_served_the_first_call(client: TestClient, digit: bytes):
    headers = {"content-type": "image/png", "idempotency-key": "retry-me.1"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HotRoutes, "find", lambda self, scope: None)
        first = client.post(CLASSIFY, content=digit, headers=headers)
    retried = client.post(CLASSIFY, content=digit, headers=headers)  # the hot route
    assert first.status_code == retried.status_code == 200
    assert "idempotent-replayed" not in first.headers and retried.headers["idempotent-replayed"] == "true"
    assert retried.json()["request_id"] == first.json()["request_id"] == first.headers["x-request-id"]
    assert retried.headers["x-request-id"] == first.headers["x-request-id"]


def test_a_repeated_header_counts_with_its_first_value_on_both_paths(client: TestClient, digit: bytes) -> None:
    headers = [("content-type", "image/png"), ("x-priority", "1"), ("x-priority", "high")]
    status, _, text = both_ways(client, True, method="POST", url=CLASSIFY, content=digit, headers=headers)
    assert status == 200, text


@pytest.mark.parametrize(
    ("url", "content", "content_type"),
    [
        (CLASSIFY, b"hello", "image/jpeg"),
        (CLASSIFY, b"", "image/png"),
        (CLASSIFY, b"a,b", "text/csv"),
        (CLASSIFY, b"x", "image/heic"),
        (CLASSIFY, b"x" * (64 * 1024 + 1), "image/png"),
        (CLASSIFY, b"--x--", "multipart/form-data"),
        ("/api/v1/models/cifar/classify", b"x", "image/png"),
        ("/api/v1/models/mnist/classify/", b"x", "image/png"),
    ],
)
def test_classify_errors_are_the_same_on_both_paths(client: TestClient, url: str, content: bytes, content_type: str):
    status, _, _ = both_ways(client, method="POST", url=url, content=content, headers={"content-type": content_type})
    assert status >= 400


def kserve_binary(row: bytes, *, declared: int | None = None, output_binary: bool = True) -> tuple[bytes, dict]:
    header = {
        "id": "call-1",
        "inputs": [
            {
                "name": "image",
                "datatype": "FP32",
                "shape": [1, 1, 28, 28],
                "parameters": {"binary_data_size": len(row) if declared is None else declared},
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": output_binary}}],
    }
    text = json.dumps(header).encode()
    return text + row, {"inference-header-content-length": str(len(text)), "content-type": "application/octet-stream"}


@pytest.fixture(scope="module")
def row(heldout_sample) -> bytes:
    return (heldout_sample[0][0].astype(np.float32) / 255.0).astype("<f4").tobytes()


@pytest.mark.parametrize(
    ("path", "case", "status"),
    [
        ("/v2/models/mnist/infer", "binary", 200),
        ("/v2/models/mnist/versions/1/infer", "json-out", 200),
        ("/v2/models/mnist/versions/9/infer", "binary", 404),
        ("/v2/models/cifar/infer", "binary", 404),
        ("/v2/models/mnist/infer", "short", 400),
        ("/v2/models/mnist/infer", "not-json", 400),
        ("/v2/models/mnist/infer", "too-large", 413),
    ],
)
def test_kserve_infer_answers_are_the_same_on_both_paths(client: TestClient, row: bytes, path: str, case: str, status):
    body, headers = kserve_binary(row, output_binary=case != "json-out")
    if case == "short":
        body, headers = kserve_binary(row[:-4], declared=len(row))
    elif case == "not-json":
        body, headers = b"{nope", {"content-type": "application/json"}
    elif case == "too-large":
        body = body + b"x" * (64 * 1024)
    answer = both_ways(client, True, method="POST", url=path, content=body, headers=headers)
    assert answer[0] == status


@pytest.mark.parametrize(
    ("path", "payload", "status"),
    [
        ("/v1/models/mnist:predict", {"instances": [[[[0.0] * 28] * 28]]}, 200),
        ("/v1/models/mnist/versions/1:predict", {"inputs": [[[[0.5] * 28] * 28]]}, 200),
        ("/v1/models/mnist/labels/stable:predict", {"instances": [[[[0.0] * 28] * 28]]}, 200),
        ("/v1/models/mnist/labels/nope:predict", {"instances": [[[[0.0] * 28] * 28]]}, 404),
        ("/v1/models/mnist:predict", {"instances": []}, 400),
        ("/v1/models/mnist:predict", [1, 2], 400),
    ],
)
def test_tfserving_predict_answers_are_the_same_on_both_paths(client: TestClient, path: str, payload, status: int):
    answer = both_ways(client, True, method="POST", url=path, json=payload)
    assert answer[0] == status


def test_an_unexpected_error_on_a_hot_route_is_the_surfaces_own_500(client: TestClient, row: bytes, monkeypatch):
    """KServe's 500 is ``{"error": ...}``, the gateway API's its own shape, on either path."""

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr("gateway.dataplane.DataPlane.spec", broken)
    body, headers = kserve_binary(row)
    status, _, text = both_ways(
        client, True, method="POST", url="/v2/models/mnist/infer", content=body, headers=headers
    )
    assert status == 500 and "secret" not in text and json.loads(text).keys() == {"error"}
    status, _, text = both_ways(
        client, True, method="POST", url=CLASSIFY, content=b"x", headers={"content-type": "image/png"}
    )
    assert status == 500 and json.loads(text)["error"]["code"] == "internal"


class FakeRequest:
    def __init__(self, hang_up: HangUp) -> None:
        self.scope = {"extensions": {HANG_UP: hang_up}}


def test_a_hang_up_cancels_the_waiting_work_and_leaves_the_request_task_usable() -> None:
    asyncio.run(hang_up_while_waiting())


async def hang_up_while_waiting() -> None:
    hang_up = HangUp()
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def work() -> str:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "answer"

    async def request() -> str:
        with pytest.raises(rest_classify.ClientDisconnected):
            await rest_classify._unless_client_leaves(FakeRequest(hang_up), work())
        assert asyncio.current_task().cancelling() == 0, "the request's task still counts the hang-up's cancel"
        await asyncio.sleep(0)  # and it can still wait: the 499 is written after this
        return "499"

    task = asyncio.ensure_future(request())
    await started.wait()
    hang_up.connection_lost()
    assert await task == "499" and cancelled.is_set()


def test_work_that_finishes_is_answered_and_a_later_hang_up_cancels_nothing() -> None:
    asyncio.run(hang_up_after_the_answer())


async def hang_up_after_the_answer() -> None:
    hang_up = HangUp()

    async def work() -> str:
        return "answer"

    assert await rest_classify._unless_client_leaves(FakeRequest(hang_up), work()) == "answer"
    hang_up.connection_lost()  # the connection closes after the answer
    await asyncio.sleep(0)
    assert asyncio.current_task().cancelling() == 0


def test_a_connection_already_lost_never_starts_the_work() -> None:
    asyncio.run(hang_up_before_the_work())


async def hang_up_before_the_work() -> None:
    hang_up = HangUp()
    hang_up.connection_lost()
    ran = []

    async def work() -> None:
        ran.append(1)

    with pytest.raises(rest_classify.ClientDisconnected):
        await rest_classify._unless_client_leaves(FakeRequest(hang_up), work())
    assert ran == []
