"""The TF Serving backend against a gateway that serves TF Serving's PredictionService (no TF Serving binary
exists in any registry here): gateway B sends its batches over gRPC to gateway A, which runs the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.bench.photos import digit_png
from tests.conftest import MODEL_REPO, REPO_ROOT, RunningGateway, refused_start, start_gateway, stop_gateway


def backends_file(path: Path, upstream: RunningGateway, **model: str) -> Path:
    """mnist on ``upstream``'s PredictionService, over mTLS with its CA and its `app` client identity."""
    pki = upstream.pki
    extra = "".join(f'{key} = "{value}"\n' for key, value in model.items())
    path.write_text(
        f'[tls]\nca = "{pki.ca_cert}"\ncert = "{pki.client_cert("app")}"\nkey = "{pki.client_key("app")}"\n'
        f'[models.mnist]\nserver = "tfserving"\nreplicas = ["{upstream.server.grpc_target}"]\n{extra}'
    )
    return path


@pytest.fixture(scope="module")
def front(gateway: RunningGateway, pki, tmp_path_factory) -> RunningGateway:
    backends = backends_file(tmp_path_factory.mktemp("tfs") / "backends.toml", gateway)
    running = start_gateway(pki, "--model-repo", str(MODEL_REPO), "--backends", str(backends))
    yield running
    stop_gateway(running)


def test_photos_run_on_the_upstream_tf_serving(front: RunningGateway, gateway: RunningGateway, heldout_sample):
    x, y = heldout_sample
    photos = [digit_png(x[i]) for i in range(6)]
    labels = []
    with front.client() as via_front, gateway.client() as direct:
        for photo, label in zip(photos, y[:6], strict=True):
            answer = via_front.post(
                "/api/v1/models/mnist/classify", content=photo, headers={"content-type": "image/png"}
            ).json()
            upstream = direct.post(
                "/api/v1/models/mnist/classify", content=photo, headers={"content-type": "image/png"}
            ).json()
            assert answer["label"] == upstream["label"]
            labels.append(int(answer["label"]) == label)
            np.testing.assert_allclose(
                list(answer["probabilities"].values()), list(upstream["probabilities"].values()), rtol=1e-5
            )
        metrics = direct.get("/metrics").text
    assert sum(labels) >= 5
    assert 'protocol="tfserving-grpc"' in metrics, "the front gateway's batches arrived over TF Serving gRPC"


def test_an_upstream_without_the_model_is_refused_at_start(gateway, pki, tmp_path: Path) -> None:
    backends = backends_file(tmp_path / "b.toml", gateway, remote_name="cifar")
    result = refused_start(pki, "--model-repo", str(MODEL_REPO), "--backends", str(backends))
    assert f"no replica of model 'mnist' version 1 on {gateway.server.grpc_target} can be reached" in result.stderr


def test_the_trace_goes_on_to_the_upstream_tf_serving(pki, tmp_path: Path) -> None:
    """Both gateways traced into one collector: the upstream's PredictionService span continues the front's
    backend span (the context travelled in the Predict call's metadata)."""
    from tests.otlp_collector import GrpcCollector

    collector = GrpcCollector().start()
    traced = {"GATEWAY_TRACING_OTLP_ENDPOINT": collector.endpoint}
    upstream = start_gateway(pki, "--model-repo", str(MODEL_REPO), env={**traced, "GATEWAY_TRACING_SERVICE_NAME": "up"})
    try:
        backends = backends_file(tmp_path / "backends.toml", upstream)
        front = start_gateway(pki, "--model-repo", str(MODEL_REPO), "--backends", str(backends), env=traced)
        try:
            with front.client() as client:
                answer = client.post(
                    "/api/v1/models/mnist/classify",
                    content=(REPO_ROOT / "docs" / "examples" / "seven.jpg").read_bytes(),
                    headers={"content-type": "image/jpeg"},
                )
            assert answer.status_code == 200
        finally:
            stop_gateway(front)
    finally:
        stop_gateway(upstream)
        collector.stop()
    spans = collector.spans
    (backend,) = [s for s in spans if s.service == "image-gateway" and s.name == "backend"]
    (predict,) = [s for s in spans if s.service == "up" and s.parent_id == backend.span_id]
    assert predict.name == "tensorflow.serving.PredictionService/Predict" and predict.trace_id == backend.trace_id
