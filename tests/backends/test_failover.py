"""Two real Triton replicas under load; one is SIGKILLed: every request is answered, and it is used again."""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from gateway.bench.photos import digit_png
from tests.backends.conftest import start_replica, write_backends
from tests.conftest import MODEL_REPO, start_gateway, stop_gateway

GRPC_THREADS = 4
REST_THREADS = 2
CALL_TIMEOUT_S = 20


class Load:
    """Clients sending requests through the gateway until stopped; every outcome is counted by kind."""

    def __init__(self, gateway, digits: np.ndarray) -> None:
        self.outcomes: Counter[str] = Counter()
        self.errors: list[str] = []
        self._gateway = gateway
        self._digits = digits
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[tuple[int, threading.Event]] = []
        self.threads = [threading.Thread(target=self._grpc, daemon=True) for _ in range(GRPC_THREADS)]
        self.threads += [threading.Thread(target=self._rest, daemon=True) for _ in range(REST_THREADS)]

    def _count(self, outcome: str, detail: str = "") -> None:
        with self._lock:
            self.outcomes[outcome] += 1
            if outcome not in ("ok", "unavailable"):
                self.errors.append(detail)
            for target, event in self._waiters:
                if self.outcomes["ok"] >= target:
                    event.set()

    def wait_for_successes(self, more: int, timeout_s: float = 60) -> None:
        """Block until ``more`` further requests have succeeded."""
        event = threading.Event()
        with self._lock:
            self._waiters.append((self.outcomes["ok"] + more, event))
        assert event.wait(timeout_s), f"no {more} successes within {timeout_s} s: {self.outcomes}"

    def _grpc(self) -> None:
        pki = self._gateway.pki
        with triton_grpc.InferenceServerClient(
            self._gateway.server.grpc_target,
            ssl=True,
            root_certificates=str(pki.ca_cert),
            private_key=str(pki.client_key("app")),
            certificate_chain=str(pki.client_cert("app")),
        ) as client:
            batch = (self._digits[:4] / 255.0).astype(np.float32)[:, np.newaxis]
            while not self._stop.is_set():
                tensor = triton_grpc.InferInput("image", list(batch.shape), "FP32")
                tensor.set_data_from_numpy(batch)
                try:
                    client.infer("mnist", [tensor], client_timeout=CALL_TIMEOUT_S)
                    self._count("ok")
                except InferenceServerException as exc:
                    unavailable = exc.status() == "StatusCode.UNAVAILABLE"
                    self._count("unavailable" if unavailable else "error", f"{exc.status()}: {exc.message()}")

    def _rest(self) -> None:
        photo = digit_png(self._digits[0])
        with self._gateway.client() as client:
            while not self._stop.is_set():
                try:
                    answer = client.post(
                        "/api/v1/models/mnist/classify",
                        content=photo,
                        headers={"content-type": "image/png"},
                        timeout=CALL_TIMEOUT_S,
                    )
                except Exception as exc:  # a hang ends here as a timeout, and fails the test
                    self._count("error", repr(exc))
                    continue
                if answer.status_code == 200:
                    self._count("ok")
                elif answer.status_code == 503 and answer.json()["error"]["code"] == "unavailable":
                    self._count("unavailable")
                else:
                    self._count("error", f"{answer.status_code}: {answer.text}")

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self.threads:
            thread.join(CALL_TIMEOUT_S + 5)


def inference_count(server, pki) -> int:
    with triton_grpc.InferenceServerClient(
        server.grpc_target,
        ssl=True,
        root_certificates=str(pki.ca_cert),
        private_key=str(pki.client_key("gateway")),
        certificate_chain=str(pki.client_cert("gateway")),
    ) as client:
        return sum(version.inference_count for version in client.get_inference_statistics("mnist").model_stats)


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.1)


def test_sigkill_of_a_replica_under_load(pki, models_pki, triton_repo, tmp_path, heldout_sample) -> None:
    first = start_replica(triton_repo, models_pki)
    second = start_replica(triton_repo, models_pki)
    restarted = gateway = None
    try:
        backends = write_backends(
            tmp_path / "backends.toml",
            models_pki,
            "triton",
            [first.grpc_target, second.grpc_target],
            timeout_s=5.0,
            health_interval_s=0.2,
        )
        gateway = start_gateway(pki, "--model-repo", str(MODEL_REPO), "--backends", str(backends))
        with Load(gateway, heldout_sample[0]) as load:
            load.wait_for_successes(30)
            assert inference_count(first, models_pki) > 0 and inference_count(second, models_pki) > 0
            first.kill()
            load.wait_for_successes(60)
            restarted = start_replica(triton_repo, models_pki, port=first.grpc_port)
            wait_until(
                lambda: inference_count(restarted, models_pki) > 0, 30, "the restarted replica serves a batch again"
            )
            load.wait_for_successes(20)
        assert not any(thread.is_alive() for thread in load.threads), "a client is still waiting for an answer"
        assert load.errors == [], f"answers other than success or a clear 503: {load.errors[:5]}"
        assert load.outcomes["ok"] >= 110
        log = "".join(gateway.output)
        assert f"ejected replica {first.grpc_target} of model mnist" in log
        assert f"re-admitted replica {first.grpc_target} of model mnist" in log
    finally:
        if gateway is not None:
            stop_gateway(gateway)
        for server in (first, second, restarted):
            if server is not None:
                server.stop()
