"""Real model servers for the backend tests: tritonserver (nvidia-pytriton's binary) with mTLS on free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from gateway.backends.triton_local import ServerTls, TritonServer, build_python_repository, start_triton
from gateway.security.pki import PkiPaths, init_pki, issue_client
from tests.conftest import MODEL_REPO

RENAMED = "mnist_renamed"
"""The same model on Triton with its input renamed: what the gateway must refuse at start-up."""


@pytest.fixture(scope="session")
def models_pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    """The model servers' own PKI: Triton's certificate, and the gateway's client identity `gateway`."""
    paths = init_pki(tmp_path_factory.mktemp("models-pki"))
    issue_client(paths, "gateway", "app")
    return paths


@pytest.fixture(scope="session")
def triton_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "models"
    build_python_repository(MODEL_REPO, out, models=["mnist"], threads=1)
    renamed = out / RENAMED
    renamed.mkdir()
    config = mc.ModelConfig()
    text_format.Parse((out / "mnist" / "config.pbtxt").read_text(), config)
    config.name = RENAMED
    config.input[0].name = "pixels"
    (renamed / "config.pbtxt").write_text(text_format.MessageToString(config))
    (renamed / "labels.txt").write_text((out / "mnist" / "labels.txt").read_text())
    (renamed / "1").mkdir()
    for name in ("model.onnx", "model.py"):
        (renamed / "1" / name).symlink_to((out / "mnist" / "1" / name).resolve())
    return out


def start_replica(repo: Path, pki: PkiPaths, port: int = 0) -> TritonServer:
    return start_triton(repo, grpc_port=port, tls=ServerTls(pki.server_cert, pki.server_key, pki.ca_cert))


@pytest.fixture(scope="session")
def triton(triton_repo: Path, models_pki: PkiPaths) -> Iterator[TritonServer]:
    server = start_replica(triton_repo, models_pki)
    yield server
    server.stop()


def write_backends(path: Path, pki: PkiPaths | None, server: str, replicas: list[str], **model: object) -> Path:
    """A backends file sending mnist to ``replicas`` (with the gateway's client certificate from ``pki``)."""
    lines = []
    if pki is not None:
        lines += [
            "[tls]",
            f'ca = "{pki.ca_cert}"',
            f'cert = "{pki.client_cert("gateway")}"',
            f'key = "{pki.client_key("gateway")}"',
        ]
    lines += ["[models.mnist]", f'server = "{server}"', f"replicas = {replicas!r}".replace("'", '"')]
    lines += [f"{key} = {value!r}".replace("'", '"') for key, value in model.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
