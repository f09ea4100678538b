"""The authorization policy: the file's rules, reloading, and enforcement on every surface of a real gateway."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as kserve_pb2
from tritonclient.grpc import service_pb2_grpc as kserve_pb2_grpc

from gateway.bench.photos import digit_png
from gateway.core.errors import PermissionDenied
from gateway.core.types import Identity
from gateway.security.pki import PkiPaths, issue_client
from gateway.security.policy import DEFAULT_POLICY, Authorizer, PolicyError, load_policy
from gateway.v1 import classifier_pb2, classifier_pb2_grpc
from tests.conftest import MODEL_REPO, REPO_ROOT, RunningGateway, start_gateway, stop_gateway
from tests.security.helpers import metric_value, replace_file, wait_until

POLICY = """
[roles.app]
models = ["*"]
actions = ["classify", "feedback"]

[roles.operator]
models = ["*"]
actions = ["*"]

[clients.hotdog-app]
models = ["hotdog"]
actions = ["classify"]
"""
HOTDOG_PHOTO = REPO_ROOT / "model_repo" / "training" / "hotdog_photos" / "hotdog" / "hol_hot_dogs-0001.jpg"
HOTDOG_APP = Identity("hotdog-app", "app")
APP = Identity("app", "app")
OPERATOR = Identity("operator", "operator")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_client_entry_replaces_its_roles_entry(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    policy = load_policy(path)
    assert policy.allows(HOTDOG_APP, "classify", "hotdog") and not policy.allows(HOTDOG_APP, "classify", "mnist")
    assert not policy.allows(HOTDOG_APP, "feedback", None)
    assert policy.allows(APP, "classify", "mnist") and not policy.allows(APP, "rollout", "mnist")
    assert policy.allows(OPERATOR, "rollout", "mnist") and policy.allows(OPERATOR, "read_photos", None)


def test_without_a_file_the_default_is_todays_behaviour() -> None:
    assert DEFAULT_POLICY.allows(Identity("anyone", "app"), "classify", "any-model")
    assert DEFAULT_POLICY.allows(Identity("anyone", "app"), "feedback", None)
    assert not DEFAULT_POLICY.allows(Identity("anyone", "app"), "rollout", "mnist")
    assert not DEFAULT_POLICY.allows(Identity("anyone", "app"), "read_photos", None)
    assert DEFAULT_POLICY.allows(Identity("anyone", "operator"), "rollout", "mnist")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[roles.app]\nmodels = ["*"]\nactions = ["clasify"]', "roles.app.actions: unknown action(s) ['clasify']"),
        ('[roles.admin]\nmodels = ["*"]\nactions = ["*"]', "roles.admin: unknown role"),
        ('[clients.x]\nmodels = "mnist"\nactions = ["*"]', "clients.x.models must be a list"),
        ('[clients.x]\nactions = ["*"]', "clients.x needs both models and actions"),
        ("[tenants]", "unknown section(s) ['tenants']"),
        ("[roles.app", "is not valid TOML"),
    ],
)
def test_a_bad_file_is_refused_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    assert message in str(raised.value) and str(path) in str(raised.value)


def test_reloaded_when_the_file_changes_and_a_broken_file_keeps_the_old_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    clock, denied = Clock(), []
    authorizer = Authorizer(path, reload_s=1.0, clock=clock, on_denied=lambda *args: denied.append(args))
    with pytest.raises(PermissionDenied, match="'hotdog-app' .*may not classify on model 'mnist'"):
        authorizer.check(HOTDOG_APP, "classify", "mnist")
    assert denied == [(HOTDOG_APP, "classify", "mnist")]
    replace_file(path, POLICY.replace('models = ["hotdog"]', 'models = ["hotdog", "mnist"]'))
    clock.now = 0.5  # checked at most once per reload_s
    assert not authorizer.allows(HOTDOG_APP, "classify", "mnist")
    clock.now = 1.5
    assert authorizer.allows(HOTDOG_APP, "classify", "mnist")
    replace_file(path, "[roles.app")
    clock.now = 3.0
    assert authorizer.allows(HOTDOG_APP, "classify", "mnist") and authorizer.reload_failures == 1
    clock.now = 5.0  # a broken file is judged once, not on every request
    assert authorizer.allows(HOTDOG_APP, "classify", "mnist") and authorizer.reload_failures == 1


@pytest.fixture(scope="module")
def policy_gateway(pki: PkiPaths, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, Path]]:
    issue_client(pki, "hotdog-app", "app")
    path = tmp_path_factory.mktemp("policy") / "policy.toml"
    path.write_text(POLICY)
    running = start_gateway(
        pki,
        "--model-repo",
        str(MODEL_REPO),
        env={"GATEWAY_SECURITY_POLICY_FILE": str(path), "GATEWAY_SECURITY_POLICY_RELOAD_S": "0.1"},
    )
    yield running, path
    stop_gateway(running)


def _kserve_grpc_infer(channel: grpc.Channel) -> None:
    request = kserve_pb2.ModelInferRequest(model_name="mnist")
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "image", "FP32"
    tensor.shape.extend([1, 1, 28, 28])
    request.raw_input_contents.append(np.zeros((1, 1, 28, 28), "<f4").tobytes())
    kserve_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)


def _tfserving_grpc_predict(channel: grpc.Channel) -> None:
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # TensorFlow: only when run

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mnist"
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in (1, 1, 28, 28)]
    shape = tensor_shape_pb2.TensorShapeProto(dim=dims)
    request.inputs["image"].CopyFrom(
        tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT, tensor_shape=shape, tensor_content=np.zeros(784, "<f4").tobytes()
        )
    )
    prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)


def test_every_surface_refuses_a_model_outside_the_callers_policy(
    policy_gateway: tuple[RunningGateway, Path], heldout_sample
) -> None:
    gateway, _ = policy_gateway
    x, _ = heldout_sample
    png = digit_png(x[0])
    zeros = np.zeros((1, 1, 28, 28)).tolist()
    expected = ("'hotdog-app'", "classify", "'mnist'")
    with gateway.client("hotdog-app") as client:
        allowed = client.post(
            "/api/v1/models/hotdog/classify", content=HOTDOG_PHOTO.read_bytes(), headers={"content-type": "image/jpeg"}
        )
        assert allowed.status_code == 200 and allowed.json()["label"] == "hotdog"
        answers = {
            "rest": client.post("/api/v1/models/mnist/classify", content=png, headers={"content-type": "image/png"}),
            "kserve-http": client.post(
                "/v2/models/mnist/infer",
                json={"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": zeros}]},
            ),
            "tfserving-http": client.post("/v1/models/mnist:predict", json={"instances": zeros}),
        }
        feedback = client.post(f"/api/v1/predictions/{allowed.json()['request_id']}/feedback", json={"label": "hotdog"})
    for surface, answer in answers.items():
        assert answer.status_code == 403, (surface, answer.text)
        body = answer.json()
        message = body["error"] if isinstance(body["error"], str) else body["error"]["message"]
        assert all(part in message for part in expected), (surface, message)
    assert feedback.status_code == 403 and "may not feedback" in feedback.json()["error"]["message"]

    with gateway.grpc_channel("hotdog-app") as channel:
        calls = {
            "grpc": lambda: classifier_pb2_grpc.ClassifierStub(channel).Classify(
                classifier_pb2.ClassifyRequest(model="mnist", image=png), timeout=30
            ),
            "kserve-grpc": lambda: _kserve_grpc_infer(channel),
            "tfserving-grpc": lambda: _tfserving_grpc_predict(channel),
        }
        for surface, call in calls.items():
            with pytest.raises(grpc.RpcError) as raised:
                call()
            assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED, surface
            assert all(part in raised.value.details() for part in expected), (surface, raised.value.details())

    with gateway.client("app") as app, gateway.client("operator") as operator:  # others keep their rights
        assert app.post("/api/v1/models/mnist/classify", content=png, headers={"content-type": "image/png"}).is_success
        assert app.get("/api/v1/models/mnist/rollout").status_code == 403
        assert operator.get("/api/v1/models/mnist/rollout").status_code == 200
        metrics = operator.get("/metrics").text
    assert metric_value(metrics, "gateway_authorization_denied_total", action="classify", model="mnist") == 6
    assert metric_value(metrics, "gateway_authorization_denied_total", action="feedback", model="*") == 1
    assert metric_value(metrics, "gateway_authorization_denied_total", action="rollout", model="mnist") == 1
    audit = [json.loads(line.split(": ", 1)[1]) for line in gateway.output if "gateway.audit: " in line]
    assert sum(1 for entry in audit if entry["client"] == "hotdog-app" and entry["action"] == "classify") == 6
    assert {"event": "authorization_denied", "client": "app", "role": "app", "action": "rollout"}.items() <= (
        next(entry for entry in audit if entry["action"] == "rollout").items()
    )


def test_the_running_gateway_follows_changes_of_the_policy_file(
    policy_gateway: tuple[RunningGateway, Path], heldout_sample
) -> None:
    gateway, path = policy_gateway
    png = digit_png(heldout_sample[0][1])
    with gateway.client("hotdog-app") as client:

        def status() -> int:
            return client.post(
                "/api/v1/models/mnist/classify", content=png, headers={"content-type": "image/png"}
            ).status_code

        assert status() == 403
        replace_file(path, POLICY.replace('models = ["hotdog"]', 'models = ["hotdog", "mnist"]'))
        wait_until(lambda: status() == 200, "the new policy lets hotdog-app classify mnist")
        replace_file(path, "[clients.hotdog-app\n")
        broken_logged = lambda: any("policy NOT reloaded" in line for line in gateway.output)  # noqa: E731
        wait_until(lambda: status() == 200 and broken_logged(), "the broken file is logged (checked on use)")
        assert status() == 200  # the last good policy stays in force
        replace_file(path, POLICY)
        wait_until(lambda: status() == 403, "the original policy is back")
    gateway.assert_alive()
