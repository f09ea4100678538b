"""Triton's model repository extension on two replicas sharing one real Redis, with Triton's own clients.

RepositoryIndex for any identity (failed versions with their reason), RepositoryModelLoad / Unload for
operators only, as the rollout's audited explicit load and unload that the other replica follows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningGateway, start_gateway, stop_gateway
from tests.ingress.conftest import triton_grpc_client, triton_http_client
from tests.redis_server import RedisServer, free_port
from tests.rollout.broken_model import model_repo_with_versions


@pytest.fixture(scope="module")
def replicas(pki, tmp_path_factory) -> Iterator[tuple[RunningGateway, RunningGateway]]:
    redis_server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    redis_server.start()
    repo = model_repo_with_versions(tmp_path_factory.mktemp("repo"), {"2": "1", "3": "corrupt"})
    env = {"GATEWAY_ROLLOUT_GUARD_ENABLED": "false"}
    args = ("--model-repo", str(repo), "--redis-url", f"redis://127.0.0.1:{redis_server.port}/0")
    gateways = []
    try:
        for i in range(2):
            spool = {"GATEWAY_PREDICTIONS_SPOOL_DIR": str(tmp_path_factory.mktemp(f"spool{i}"))}
            gateways.append(start_gateway(pki, *args, env={**env, **spool}))
        yield gateways[0], gateways[1]
    finally:
        for gateway in gateways:
            stop_gateway(gateway)
        redis_server.stop()


def wait_for(check: Callable[[], object], timeout_s: float = 10.0) -> object:
    """Poll ``check`` until it returns something truthy (returns as soon as it holds)."""
    deadline = time.monotonic() + timeout_s
    while not (result := check()) and time.monotonic() < deadline:
        pass
    return result


def index(gateway: RunningGateway, identity: str = "app") -> dict[str, tuple[str, str]]:
    with triton_grpc_client(gateway, identity) as client:
        models = client.get_model_repository_index().models
    assert {model.name for model in models} == {"mnist"}
    return {model.version: (model.state, model.reason) for model in models}


def version_parameter(version: str) -> dict[str, service_pb2.ModelRepositoryParameter]:
    return {"version": service_pb2.ModelRepositoryParameter(string_param=version)}


def stub_call(gateway: RunningGateway, identity: str, method: str, **fields):
    with gateway.grpc_channel(identity) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = getattr(service_pb2, f"{method}Request")(**fields)
        return getattr(stub, method)(request, timeout=30)


def audit_actions(gateway: RunningGateway) -> list[tuple[str, str]]:
    with gateway.client("operator") as client:
        entries = client.get("/api/v1/models/mnist/rollout/audit").json()["entries"]
    return [(entry["action"], entry["who"]) for entry in entries]


def test_the_index_lists_every_version_with_its_state_for_any_identity(replicas) -> None:
    a, _ = replicas
    states = index(a)
    assert sorted(states, key=int) == ["1", "2", "3"]  # every version directory of the repository
    assert states["1"] == states["2"] == ("READY", "")
    assert states["3"][0] == "UNAVAILABLE" and states["3"][1].startswith("failed to load: ")
    assert "model.onnx" in states["3"][1]
    http = triton_http_client(a)
    try:
        assert http.get_model_repository_index() == [
            {"name": "mnist", "version": v, "state": state, "reason": reason} for v, (state, reason) in states.items()
        ]
    finally:
        http.close()
    ready = stub_call(a, "app", "RepositoryIndex", ready=True).models
    assert [(m.name, m.version, m.state) for m in ready] == [("mnist", "1", "READY"), ("mnist", "2", "READY")]


def test_apps_may_not_load_or_unload(replicas) -> None:
    a, _ = replicas
    before = index(a)
    with triton_grpc_client(a) as client:
        with pytest.raises(InferenceServerException) as raised:
            client.load_model("mnist")
        assert raised.value.status() == "StatusCode.PERMISSION_DENIED"
    with pytest.raises(grpc.RpcError) as denied:
        stub_call(a, "app", "RepositoryModelUnload", model_name="mnist", parameters=version_parameter("1"))
    assert denied.value.code().name == "PERMISSION_DENIED"
    with a.client() as client:
        response = client.post("/v2/repository/models/mnist/unload", json={"parameters": {"version": "1"}})
    assert response.status_code == 403 and "may not rollout" in response.json()["error"]
    assert index(a) == before


def test_an_operator_unloads_and_loads_a_version_and_the_other_replica_follows(replicas) -> None:
    a, b = replicas
    stub_call(a, "operator", "RepositoryModelUnload", model_name="mnist", parameters=version_parameter("2"))
    unloaded = ("UNAVAILABLE", "unloaded by an operator")
    assert index(a)["2"] == unloaded
    assert wait_for(lambda: index(b)["2"] == unloaded), index(b)
    with triton_grpc_client(b) as client:
        assert not client.is_model_ready("mnist", "2") and client.is_model_ready("mnist", "1")
    with b.client("operator") as client:
        response = client.post("/v2/repository/models/mnist/load", json={"parameters": {"version": "2"}})
    assert response.status_code == 200, response.text
    assert index(b)["2"] == ("READY", "")
    assert wait_for(lambda: index(a)["2"] == ("READY", "")), index(a)
    assert audit_actions(a)[-2:] == [("unload", "operator"), ("load", "operator")]
    with triton_grpc_client(a, "operator") as client:
        client.load_model("mnist")  # Triton's plain load: the model is synced with its directory
        assert client.is_model_ready("mnist", "1") and client.is_model_ready("mnist", "2")


@pytest.mark.parametrize(
    ("method", "fields", "code", "message"),
    [
        ("RepositoryModelUnload", {"parameters": version_parameter("1")}, "INVALID_ARGUMENT", "is the stable version"),
        ("RepositoryModelUnload", {}, "INVALID_ARGUMENT", "keeps serving: the rollout routes to version 1"),
        ("RepositoryModelLoad", {"parameters": version_parameter("3")}, "INVALID_ARGUMENT", "does not load"),
        ("RepositoryModelLoad", {"parameters": version_parameter("8")}, "NOT_FOUND", "no version directory"),
        ("RepositoryModelLoad", {"parameters": version_parameter("x")}, "INVALID_ARGUMENT", "a version number"),
        ("RepositoryModelLoad", {"repository_name": "other"}, "NOT_FOUND", "one model repository"),
    ],
)
def test_bad_loads_and_unloads_are_refused_precisely(replicas, method, fields, code, message) -> None:
    a, _ = replicas
    with pytest.raises(grpc.RpcError) as raised:
        stub_call(a, "operator", method, model_name="mnist", **fields)
    assert raised.value.code().name == code and message in raised.value.details()
    assert index(a)["1"] == ("READY", "")


def test_a_configuration_or_files_cannot_be_uploaded(replicas) -> None:
    a, _ = replicas
    with triton_grpc_client(a, "operator") as client:
        with pytest.raises(InferenceServerException, match="configuration and files come from the model repository"):
            client.load_model("mnist", config='{"max_batch_size": 8}')
        with pytest.raises(InferenceServerException, match="unknown model 'cifar'"):
            client.load_model("cifar")
