"""TensorFlow Serving's ModelService (GetModelStatus, HandleReloadConfigRequest) with the real
tensorflow-serving-api stubs, against a gateway whose repository holds a version that fails to load.

Like test_tfserving.py, this module must not import gateway.tfs (TensorFlow's protos and the gateway's
byte-compatible copy would clash in one process): the copy is exercised in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import json_format
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from tests.conftest import REPO_ROOT, RunningGateway, start_gateway, stop_gateway
from tests.rollout.broken_model import model_repo_with_versions

ModelVersionStatus = get_model_status_pb2.ModelVersionStatus


@pytest.fixture(scope="module")
def broken(pki, tmp_path_factory) -> Iterator[RunningGateway]:
    repo = model_repo_with_versions(tmp_path_factory.mktemp("repo"), {"2": "1", "3": "corrupt"})
    running = start_gateway(pki, "--model-repo", str(repo))
    yield running
    stop_gateway(running)


def get_status(gateway: RunningGateway, *, version: int | None = None, label: str | None = None, model="mnist"):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    with gateway.grpc_channel() as channel:
        return model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)


def as_rest(response) -> dict:
    """The gRPC answer in the JSON form TF Serving's REST API gives it."""
    return json_format.MessageToDict(
        response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def rest_status(gateway: RunningGateway, path: str = "") -> dict:
    with gateway.client() as client:
        response = client.get(f"/v1/models/mnist{path}")
    assert response.status_code == 200, response.text
    return response.json()


def test_every_version_with_its_state_and_error_agreeing_with_rest(broken: RunningGateway) -> None:
    response = get_status(broken)
    states = [(s.version, ModelVersionStatus.State.Name(s.state)) for s in response.model_version_status]
    assert states == [(1, "AVAILABLE"), (2, "AVAILABLE"), (3, "END")]
    failed = response.model_version_status[2].status
    assert failed.error_code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert failed.error_message.startswith("failed to load: ") and "model.onnx" in failed.error_message
    assert all(s.status.error_code == 0 and not s.status.error_message for s in response.model_version_status[:2])
    assert as_rest(response) == rest_status(broken)
    assert as_rest(get_status(broken, version=3)) == rest_status(broken, "/versions/3")
    stable = get_status(broken, label="stable")
    assert [s.version for s in stable.model_version_status] == [1]
    assert as_rest(stable) == rest_status(broken, "/labels/stable")


def test_an_unloaded_version_ends_and_comes_back(broken: RunningGateway) -> None:
    with broken.client("operator") as operator:
        assert operator.post("/api/v1/models/mnist/versions/2/unload").status_code == 200
        response = get_status(broken, version=2)
        rest = rest_status(broken, "/versions/2")
        assert operator.post("/api/v1/models/mnist/versions/2/load").status_code == 200
    status = response.model_version_status
    assert [(s.version, ModelVersionStatus.State.Name(s.state), s.status.error_code) for s in status] == [(2, "END", 0)]
    assert status[0].status.error_message == "unloaded by an operator"
    assert rest == as_rest(response)
    assert ModelVersionStatus.State.Name(get_status(broken, version=2).model_version_status[0].state) == "AVAILABLE"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": 9}, "model 'mnist' has no version '9'"),
        ({"label": "canary"}, "labelled 'canary'"),
        ({"model": "cifar"}, "unknown model 'cifar'"),
    ],
)
def test_unknown_versions_labels_and_models_are_not_found(broken: RunningGateway, kwargs, message) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        get_status(broken, **kwargs)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND and message in raised.value.details()


@pytest.mark.parametrize("identity", ["app", "operator"])
def test_a_config_reload_is_refused_with_the_reason(broken: RunningGateway, identity: str) -> None:
    request = model_management_pb2.ReloadConfigRequest()
    model = request.config.model_config_list.config.add(name="mnist", base_path="/models/mnist")
    model.model_platform = "tensorflow"
    with broken.grpc_channel(identity) as channel, pytest.raises(grpc.RpcError) as raised:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "configuration is its model repository" in raised.value.details()
    assert get_status(broken, version=1).model_version_status[0].state == ModelVersionStatus.AVAILABLE


GATEWAY_SIDE = """
import json, sys
from gateway.tfs import error_codes_pb2, serving_pb2 as s
status = s.StatusProto(error_code=error_codes_pb2.UNAVAILABLE, error_message="failed to load: x")
response = s.GetModelStatusResponse(model_version_status=[
    s.ModelVersionStatus(version=1, state=s.ModelVersionStatus.AVAILABLE, status=s.StatusProto()),
    s.ModelVersionStatus(version=3, state=s.ModelVersionStatus.END, status=status),
])
request = s.GetModelStatusRequest(model_spec=s.ModelSpec(name="mnist", version_label="stable"))
reload = s.ReloadConfigRequest.FromString(bytes.fromhex(sys.argv[1]))
print(json.dumps({
    "response": response.SerializeToString().hex(),
    "request": request.SerializeToString().hex(),
    "reload": reload.SerializeToString().hex(),
    "parsed_request": s.GetModelStatusRequest.FromString(bytes.fromhex(sys.argv[2])).model_spec.version.value,
}))
"""


def test_the_gateway_protos_are_byte_compatible_with_tensorflow_serving() -> None:
    reload = model_management_pb2.ReloadConfigRequest(config=model_server_config_pb2.ModelServerConfig())
    reload.config.model_config_list.config.add(name="mnist", base_path="/models/mnist")
    by_version = get_model_status_pb2.GetModelStatusRequest()
    by_version.model_spec.name = "mnist"
    by_version.model_spec.version.value = 2
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    argv = [sys.executable, "-c", GATEWAY_SIDE, reload.SerializeToString().hex(), by_version.SerializeToString().hex()]
    ours = json.loads(subprocess.run(argv, env=env, capture_output=True, check=True, text=True).stdout)
    real = get_model_status_pb2.GetModelStatusResponse()
    real.model_version_status.add(version=1, state=ModelVersionStatus.AVAILABLE).status.SetInParent()
    failed = real.model_version_status.add(version=3, state=ModelVersionStatus.END).status
    failed.error_code, failed.error_message = grpc.StatusCode.UNAVAILABLE.value[0], "failed to load: x"
    assert bytes.fromhex(ours["response"]) == real.SerializeToString()
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name, request.model_spec.version_label = "mnist", "stable"
    assert bytes.fromhex(ours["request"]) == request.SerializeToString()
    assert bytes.fromhex(ours["reload"]) == reload.SerializeToString()  # the config passes through untouched
    assert ours["parsed_request"] == 2
