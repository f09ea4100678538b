"""The gateway in front of a real Triton (nvidia-pytriton's tritonserver), over mTLS with its own client cert."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from gateway.backends.triton_local import TritonServer, free_port
from gateway.bench.photos import digit_png
from gateway.security.pki import PkiPaths
from tests.backends.conftest import RENAMED, write_backends
from tests.conftest import MNIST_STABLE, MODEL_REPO, REPO_ROOT, RunningGateway, start_gateway, stop_gateway


def local_probabilities(batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(
        str(MODEL_REPO / "mnist" / MNIST_STABLE / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(["probabilities"], {"image": batch})[0]


@pytest.fixture(scope="module")
def fronted(pki: PkiPaths, models_pki: PkiPaths, triton: TritonServer, tmp_path_factory) -> RunningGateway:
    backends = write_backends(
        tmp_path_factory.mktemp("backends") / "backends.toml", models_pki, "triton", [triton.grpc_target]
    )
    gateway = start_gateway(pki, "--model-repo", str(MODEL_REPO), "--backends", str(backends))
    yield gateway
    stop_gateway(gateway)


def test_triton_refuses_a_client_without_the_model_servers_certificate(triton: TritonServer, models_pki) -> None:
    with (
        triton_grpc.InferenceServerClient(
            triton.grpc_target, ssl=True, root_certificates=str(models_pki.ca_cert)
        ) as anonymous,
        pytest.raises(InferenceServerException),
    ):
        anonymous.is_server_ready(client_timeout=5)


def test_photos_and_tensors_run_on_triton(fronted: RunningGateway, triton: TritonServer, models_pki, heldout_sample):
    x, y = heldout_sample
    with triton_grpc.InferenceServerClient(
        triton.grpc_target,
        ssl=True,
        root_certificates=str(models_pki.ca_cert),
        private_key=str(models_pki.client_key("gateway")),
        certificate_chain=str(models_pki.client_cert("gateway")),
    ) as direct:
        before = direct.get_inference_statistics("mnist", MNIST_STABLE).model_stats[0].inference_count
        with fronted.client() as client:
            answers = [
                client.post(
                    "/api/v1/models/mnist/classify", content=digit_png(x[i]), headers={"content-type": "image/png"}
                )
                for i in range(8)
            ]
        assert [a.status_code for a in answers] == [200] * 8
        assert sum(a.json()["label"] == str(y[i]) for i, a in enumerate(answers)) >= 7
        batch = (x[:16] / 255.0).astype(np.float32)[:, np.newaxis]
        with triton_grpc.InferenceServerClient(
            fronted.server.grpc_target,
            ssl=True,
            root_certificates=str(fronted.pki.ca_cert),
            private_key=str(fronted.pki.client_key("app")),
            certificate_chain=str(fronted.pki.client_cert("app")),
        ) as via_gateway:
            tensor = triton_grpc.InferInput("image", list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch)
            probabilities = via_gateway.infer("mnist", [tensor]).as_numpy("probabilities")
        np.testing.assert_allclose(probabilities, local_probabilities(batch), rtol=1e-5, atol=1e-6)
        after = direct.get_inference_statistics("mnist", MNIST_STABLE).model_stats[0].inference_count
    assert after - before == 8 + 16, "every row ran on Triton, none in the gateway's process"


def run_gateway_until_exit(pki: PkiPaths, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--pki-dir",
            str(pki.root),
            "--model-repo",
            str(MODEL_REPO),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )


def test_start_up_refuses_a_remote_model_that_differs_from_its_config(pki, models_pki, triton, tmp_path: Path):
    backends = write_backends(tmp_path / "b.toml", models_pki, "triton", [triton.grpc_target], remote_name=RENAMED)
    result = run_gateway_until_exit(pki, "--backends", str(backends))
    assert result.returncode == 2
    assert (
        f"{triton.grpc_target} model '{RENAMED}' version 1 (for {MODEL_REPO}/mnist/config.pbtxt): "
        "inputs are ['pixels'], config.pbtxt says ['image']"
    ) in result.stderr


def test_start_up_refuses_when_no_replica_can_be_reached(pki, models_pki, tmp_path: Path):
    nowhere = f"127.0.0.1:{free_port()}"
    backends = write_backends(tmp_path / "b.toml", models_pki, "triton", [nowhere], timeout_s=2)
    result = run_gateway_until_exit(pki, "--backends", str(backends))
    assert result.returncode == 2
    assert f"no replica of model 'mnist' version 1 on {nowhere} can be reached: {nowhere}: not ready" in result.stderr


def test_start_up_refuses_a_backends_file_naming_an_unknown_model(pki, tmp_path: Path):
    backends = tmp_path / "b.toml"
    backends.write_text('[models.mnits]\nserver = "triton"\nreplicas = ["127.0.0.1:1"]\n')
    result = run_gateway_until_exit(pki, "--backends", str(backends))
    assert result.returncode == 2
    assert "names model(s) ['mnits'] that" in result.stderr
