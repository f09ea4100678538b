"""The in-process backend: one session per instance running batches at once, I/O binding, per-instance metrics,
and start-up refusals of a GPU that is not there, on the real models and a real gateway."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.backends.devices import CPU, CUDA, DeviceProbe, Instance
from gateway.backends.onnxruntime import OnnxRuntimeBackend, _BoundRun, open_session
from gateway.models.repository import RepositoryError, load_repository
from tests.conftest import MODEL_REPO, refused_start, start_gateway, stop_gateway
from tests.redis_server import free_port

HOTDOG = load_repository(MODEL_REPO)["hotdog"]
HOST = DeviceProbe()
ON_GPU = CUDA in HOST.providers() and isinstance(HOST.gpu_count(), int) and HOST.gpu_count() > 0
needs_no_gpu = pytest.mark.skipif(ON_GPU, reason="this host has a GPU and the CUDA provider")
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="no GPU with onnxruntime's CUDA provider here")


def hotdog_backend(instances: int, on_execution=None) -> OnnxRuntimeBackend:
    planned = [Instance(f"hotdog_0_{i}", "cpu", ((CPU, {}),), 1) for i in range(instances)]
    path = HOTDOG.versions[HOTDOG.latest_version]
    return OnnxRuntimeBackend(path, HOTDOG.input, HOTDOG.output, 1, planned, on_execution)


def test_two_instances_run_two_batches_at_once_each_on_its_own_session() -> None:
    runs: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    def report(instance: Instance, seconds: float) -> None:
        with lock:
            runs.append((instance.name, time.perf_counter() - seconds, time.perf_counter()))

    backend = hotdog_backend(2, report)
    batch = np.random.default_rng(0).random((8, 3, 224, 224), dtype=np.float32)
    try:
        first, second = asyncio.run(_together(backend, batch))
    finally:
        backend.close()
    np.testing.assert_allclose(first, second, rtol=1e-5)
    assert sorted(name for name, _, _ in runs) == ["hotdog_0_0", "hotdog_0_1"], "one batch on each instance"
    (_, start_a, end_a), (_, start_b, end_b) = runs
    assert start_a < end_b and start_b < end_a, "the two runs overlapped"


async def _together(backend: OnnxRuntimeBackend, batch: np.ndarray) -> list[np.ndarray]:
    return list(await asyncio.gather(backend.infer(batch), backend.infer(batch)))


def test_io_binding_gives_what_a_plain_run_gives() -> None:
    instance = Instance("hotdog_0_0", "cpu", ((CPU, {}),), 1)
    path = HOTDOG.versions[HOTDOG.latest_version]
    session = open_session(path, instance)
    bound = _BoundRun(session, HOTDOG.input.name, HOTDOG.output.name, "cpu")
    rng = np.random.default_rng(1)
    for rows in (1, 3, 3):  # a shape seen again reuses its buffer
        batch = rng.random((rows, 3, 224, 224), dtype=np.float32)
        plain = session.run([HOTDOG.output.name], {HOTDOG.input.name: batch})[0]
        np.testing.assert_array_equal(bound(batch), plain)


@needs_no_gpu
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available provider names")
def test_a_provider_onnx_runtime_drops_is_refused_not_run_on_the_cpu() -> None:
    instance = Instance("hotdog_0_0", "cuda:0", ((CUDA, {"device_id": 0}), (CPU, {})), 1)
    with pytest.raises(RepositoryError, match="instance hotdog_0_0 asked for CUDAExecutionProvider on cuda:0"):
        open_session(HOTDOG.versions[HOTDOG.latest_version], instance)


def copy_repo(root: Path, mnist_config: str) -> Path:
    repo = root / "repo"
    shutil.copytree(MODEL_REPO / "mnist", repo / "mnist")
    config = repo / "mnist" / "config.pbtxt"
    config.write_text(config.read_text().replace("instance_group [ { count: 1 } ]", mnist_config))
    return repo


@needs_no_gpu
def test_a_gateway_asked_for_a_gpu_it_has_not_got_refuses_to_start(pki, tmp_path: Path) -> None:
    repo = copy_repo(tmp_path, "instance_group [ { kind: KIND_GPU, gpus: [ 0 ], count: 2 } ]")
    result = refused_start(pki, "--model-repo", str(repo))
    assert "no version of model 'mnist' loads" in result.stderr
    assert "instance_group 0 (KIND_GPU, gpus [0], count 2) asks for a GPU" in result.stderr
    assert "this onnxruntime has no CUDAExecutionProvider" in result.stderr


def test_metrics_show_every_instance_and_its_device(pki, tmp_path: Path, heldout_sample) -> None:
    fallback = 'parameters { key: "gateway.gpu_fallback" value: { string_value: "cpu" } }'
    groups = f"instance_group [ {{ kind: KIND_CPU, count: 2 }}, {{ kind: KIND_GPU, count: 1 }} ]\n{fallback}"
    health_port = free_port()
    env = {"GATEWAY_SERVER_HEALTH_PORT": str(health_port)}
    gateway = start_gateway(pki, "--model-repo", str(copy_repo(tmp_path, groups)), env=env)
    try:
        rows = (heldout_sample[0][:8] / 255.0).astype(np.float32)[:, np.newaxis].tolist()
        with gateway.client() as client:
            for row in rows:  # one request at a time: the instances take turns
                body = {"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [row]}]}
                assert client.post("/v2/models/mnist/versions/1/infer", json=body).status_code == 200
        text = urllib.request.urlopen(f"http://127.0.0.1:{health_port}/metrics", timeout=10).read().decode()
    finally:
        stop_gateway(gateway)
    counts = {
        (sample.labels["instance"], sample.labels["device"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "gateway_instance_execution_seconds_count" and sample.labels["version"] == "1"
    }
    assert counts.keys() == {("mnist_0_0", "cpu"), ("mnist_0_1", "cpu"), ("mnist_1_0", "cpu")}
    assert sum(counts.values()) == len(rows) and all(count > 0 for count in counts.values())
    assert "running on the CPU (gateway.gpu_fallback = cpu)" in "".join(gateway.output)


@needs_gpu
def test_on_a_gpu_io_bound_cuda_instances_give_what_the_cpu_gives() -> None:
    path = HOTDOG.versions[HOTDOG.latest_version]
    cuda = [Instance(f"hotdog_0_{i}", "cuda:0", ((CUDA, {"device_id": 0}), (CPU, {})), 1) for i in range(2)]
    on_gpu = OnnxRuntimeBackend(path, HOTDOG.input, HOTDOG.output, 1, cuda)
    on_cpu = hotdog_backend(1)
    batch = np.random.default_rng(2).random((8, 3, 224, 224), dtype=np.float32)
    try:
        for _ in range(2):  # the pinned buffer of a shape is reused
            first, second = asyncio.run(_together(on_gpu, batch))
            expected = on_cpu.infer_sync(batch)
            np.testing.assert_allclose(first, expected, atol=1e-4)
            np.testing.assert_allclose(second, expected, atol=1e-4)
    finally:
        on_gpu.close()
        on_cpu.close()


@needs_gpu
def test_on_a_gpu_a_gateway_serves_from_cuda_instances(pki, tmp_path: Path, heldout_sample) -> None:
    health_port = free_port()
    repo = copy_repo(tmp_path, "instance_group [ { kind: KIND_GPU, gpus: [ 0 ], count: 2 } ]")
    gateway = start_gateway(pki, "--model-repo", str(repo), env={"GATEWAY_SERVER_HEALTH_PORT": str(health_port)})
    try:
        row = (heldout_sample[0][:1] / 255.0).astype(np.float32)[:, np.newaxis]
        body = {
            "inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": row.ravel().tolist()}]
        }
        with gateway.client() as client:
            answer = client.post("/v2/models/mnist/versions/1/infer", json=body)
        assert answer.status_code == 200, answer.text
        text = urllib.request.urlopen(f"http://127.0.0.1:{health_port}/metrics", timeout=10).read().decode()
    finally:
        stop_gateway(gateway)
    devices = {
        sample.labels["device"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "gateway_instance_execution_seconds_count" and sample.value > 0
    }
    assert devices == {"cuda:0"}
