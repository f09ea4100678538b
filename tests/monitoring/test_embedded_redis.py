"""No orphans: the embedded redis-server ends with its gateway however the gateway dies (SIGKILL
included), saving its data; a new start on the same file first stops a server left running there."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import redis

from gateway.monitoring.embedded_redis import EmbeddedRedis, _alive
from gateway.monitoring.prediction_log import stream_name
from tests.conftest import MODEL_REPO, start_gateway


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)  # polls another process's state: nothing to be notified by


def parent_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("PPid:")).split()[1])


def socket_of(pid: int) -> str:
    """The path of the unix socket process ``pid`` listens on (redis-server rewrites its command line)."""
    inodes = {os.readlink(fd).removeprefix("socket:[").removesuffix("]") for fd in Path(f"/proc/{pid}/fd").iterdir()}
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) == 8 and fields[6] in inodes:
            return fields[7]
    raise AssertionError(f"process {pid} listens on no unix socket")


def test_a_sigkilled_gateway_takes_its_embedded_redis_with_it_and_the_data_is_saved(pki, tmp_path) -> None:
    db = tmp_path / "redis" / "gateway.db"
    gateway = start_gateway(pki, "--model-repo", str(MODEL_REPO), env={"GATEWAY_PREDICTIONS_EMBEDDED_DB": str(db)})
    redis_pid = int(db.with_name("gateway.db.pid").read_text())
    assert parent_of(redis_pid) == gateway.server.process.pid
    body = {"id": "before-the-kill", "inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32"}]}
    body["inputs"][0]["data"] = [0.5] * 784
    with gateway.client() as client:
        assert client.post("/v2/models/mnist/infer", json=body).status_code == 200
    store = redis.Redis(unix_socket_path=socket_of(redis_pid))
    wait_until(lambda: store.xlen(stream_name("mnist")) == 1, 10, "the record did not reach Redis")
    store.close()

    os.kill(gateway.server.process.pid, signal.SIGKILL)
    gateway.server.process.wait()
    wait_until(lambda: not _alive(redis_pid), 15, "the embedded redis-server outlived its SIGKILLed gateway")

    restarted = EmbeddedRedis(db)
    try:
        entries = redis.Redis(unix_socket_path=restarted.socket_path).xrange(stream_name("mnist"))
        assert [json.loads(fields[b"record"])["request_id"] for _, fields in entries] == ["before-the-kill.0"]
    finally:
        restarted.close()
    assert not _alive(restarted.process.pid)


def test_a_new_start_stops_a_server_left_on_its_file_and_keeps_its_data(tmp_path) -> None:
    db = tmp_path / "redis" / "gateway.db"
    left = EmbeddedRedis(db)
    redis.Redis(unix_socket_path=left.socket_path).set("written-by", "the first server")
    successor = EmbeddedRedis(db)  # as a restarted gateway would, with the old server still running
    try:
        assert left.process.poll() is not None, "the old server was not stopped first"
        assert redis.Redis(unix_socket_path=successor.socket_path).get("written-by") == b"the first server"
    finally:
        successor.close()
