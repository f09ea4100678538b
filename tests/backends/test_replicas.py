"""ReplicaSet's rules with fake replicas: spreading, one retry on a dead replica, ejection and re-admission."""

from __future__ import annotations

import asyncio
import functools

import numpy as np
import pytest

from gateway.backends.remote import RemoteMetadata, RemoteModelError, RemoteTensor, ReplicaDown, check_metadata
from gateway.backends.replicas import ReplicaSet
from gateway.core.errors import Unavailable
from gateway.models.repository import RepositoryError, load_repository
from tests.conftest import MODEL_REPO

SPEC = load_repository(MODEL_REPO)["mnist"]
GOOD = RemoteMetadata(
    (RemoteTensor("image", "FP32", (-1, 1, 28, 28)),), (RemoteTensor("probabilities", "FP32", (-1, 10)),)
)


class FakeServer:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.down = False
        self.fail_model = False
        self.meta = GOOD
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def metadata(self) -> RemoteMetadata:
        if self.down:
            raise ReplicaDown(f"{self.endpoint}: UNAVAILABLE")
        return self.meta

    async def ready(self) -> bool:
        return not self.down

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise ReplicaDown(f"{self.endpoint}: UNAVAILABLE: connection refused")
        if self.fail_model:
            raise RemoteModelError(f"{self.endpoint}: INVALID_ARGUMENT: bad tensor")
        return np.zeros((len(batch), 10), np.float32)

    async def close(self) -> None:
        return None


def replica_set(*names: str) -> tuple[ReplicaSet, dict[str, FakeServer]]:
    servers = {name: FakeServer(name) for name in names}
    replicas = ReplicaSet(SPEC, "1", list(names), servers.__getitem__, remote_name="mnist", health_interval_s=3600)
    return replicas, servers


def run(case):
    """pytest here has no asyncio plugin: run each async case on its own loop."""

    @functools.wraps(case)
    def test() -> None:
        asyncio.run(case())

    return test


BATCH = np.zeros((4, 1, 28, 28), np.float32)


@run
async def test_batches_go_to_the_replica_with_least_outstanding_work() -> None:
    replicas, servers = replica_set("a", "b")
    gate = asyncio.Event()
    for server in servers.values():
        server.gate = gate
    slow = asyncio.create_task(replicas.infer(BATCH))
    await asyncio.sleep(0)  # one step: the batch reaches its replica and waits there
    busy = next(r for r in replicas.replicas if r.outstanding)
    idle = next(r for r in replicas.replicas if r is not busy)
    assert busy.outstanding == 4
    servers[idle.endpoint].gate = None
    await replicas.infer(BATCH)
    await replicas.infer(BATCH)
    assert idle.served == 2 and busy.served == 0
    gate.set()
    await slow
    assert busy.served == 1 and busy.outstanding == 0
    replicas.close()


@run
async def test_a_dead_replica_is_ejected_and_the_batch_retried_once_elsewhere() -> None:
    replicas, servers = replica_set("a", "b")
    servers["a"].down = True
    for _ in range(4):
        assert (await replicas.infer(BATCH)).shape == (4, 10)
    a, b = replicas.replicas
    assert not a.healthy and "connection refused" in a.last_error
    assert servers["a"].calls == 1, "an ejected replica gets no batches while another is healthy"
    assert b.served == 4
    servers["a"].down = False
    await replicas.check_health()
    assert a.healthy, "re-admitted once its health check passes"
    replicas.close()


@run
async def test_unavailable_only_when_no_replica_can_serve() -> None:
    replicas, servers = replica_set("a", "b")
    servers["a"].down = servers["b"].down = True
    with pytest.raises(Unavailable, match="no replica of model 'mnist' version 1 on a, b can serve: .*a: UNAVAILABLE"):
        await replicas.infer(BATCH)
    servers["b"].down = False
    assert (await replicas.infer(BATCH)).shape == (4, 10), "with everyone ejected, batches still try (panic mode)"
    replicas.close()


@run
async def test_a_model_error_is_not_retried_on_another_replica() -> None:
    replicas, servers = replica_set("a", "b")
    servers["a"].fail_model = servers["b"].fail_model = True
    with pytest.raises(Unavailable, match="INVALID_ARGUMENT: bad tensor"):
        await replicas.infer(BATCH)
    assert servers["a"].calls + servers["b"].calls == 1
    assert all(r.healthy for r in replicas.replicas)
    replicas.close()


@run
async def test_a_replica_back_with_another_model_stays_ejected() -> None:
    replicas, servers = replica_set("a")
    replicas.replicas[0].healthy = False
    servers["a"].meta = RemoteMetadata(GOOD.inputs, (RemoteTensor("probabilities", "FP32", (-1, 1000)),))
    await replicas.check_health()
    assert not replicas.replicas[0].healthy
    assert "output 'probabilities' has shape [-1, 1000], config.pbtxt says [-1, 10]" in replicas.replicas[0].last_error
    replicas.close()


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (RemoteMetadata((RemoteTensor("image", "FP16", (-1, 1, 28, 28)),), GOOD.outputs), "datatype FP16"),
        (RemoteMetadata((RemoteTensor("image", "FP32", (-1, 3, 28, 28)),), GOOD.outputs), "shape [-1, 3, 28, 28]"),
        (RemoteMetadata(GOOD.inputs, ()), "outputs are [], config.pbtxt says ['probabilities']"),
    ],
)
def test_metadata_mismatches_are_named(metadata: RemoteMetadata, message: str) -> None:
    with pytest.raises(RepositoryError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_metadata(SPEC, "1", "host:1", "mnist", metadata)
    check_metadata(
        SPEC, "1", "host:1", "mnist", RemoteMetadata((RemoteTensor("image", "FP32", (-1, -1, 28, 28)),), GOOD.outputs)
    )
