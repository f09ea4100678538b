"""Locust scenarios against a running gateway. Never import this module into another process: locust
monkey-patches the whole process with gevent. ``python -m loadtests`` runs it as a subprocess.

Environment (set by the runner; point them at your own gateway to run it by hand):
  LOADTEST_CA, LOADTEST_CERT, LOADTEST_KEY   mTLS files (the app's client certificate)
  LOADTEST_PHOTOS                            a directory of JPEG photos to upload (MNIST digits)
  LOADTEST_HOTDOG_PHOTOS                     a directory of JPEG photos for the hot dog model (optional)
  LOADTEST_GRPC_TARGET                       host:port of the gateway's gRPC services
  LOADTEST_STEPS, LOADTEST_STEP_S            step ramp: users per step ("10,20,40") and seconds per step
  LOADTEST_RATE_PER_USER                     requests/s each paced user aims at (default 1)
  LOADTEST_EVENTS                            where to write one JSON line per request (for the report)

User classes (pick with locust's positional arguments):
  PhotoAppUser       an app uploading MNIST photos over REST (paced: LOADTEST_RATE_PER_USER req/s)
  HotdogAppUser      an app uploading prepared hot dog photos over REST, with think time
  GrpcClassifyUser   a gRPC library user calling gateway.v1.Classifier/Classify
  KServeInferUser    a Triton client calling KServe ModelInfer with a preprocessed tensor
  BrowsingUser       an app user with realistic think time: metadata, then a photo or two
  BulkRescoreUser    a back-office job re-scoring stored photos at low batching priority (x-priority: 2)
"""

from __future__ import annotations

import json
import os
import random
import ssl
import time
from pathlib import Path

import gevent.ssl
import grpc
import grpc.experimental.gevent as grpc_gevent
import numpy as np
from locust import LoadTestShape, User, between, constant_throughput, events, task
from locust.contrib.fasthttp import FastHttpUser

grpc_gevent.init_gevent()

from tritonclient.grpc import service_pb2 as kserve_pb2  # noqa: E402
from tritonclient.grpc import service_pb2_grpc as kserve_pb2_grpc  # noqa: E402

from gateway.v1 import classifier_pb2, classifier_pb2_grpc  # noqa: E402

CA, CERT, KEY = (os.environ.get(name, "") for name in ("LOADTEST_CA", "LOADTEST_CERT", "LOADTEST_KEY"))
RATE = float(os.environ.get("LOADTEST_RATE_PER_USER", "1"))


def _photos(variable: str) -> list[bytes]:
    folder = os.environ.get(variable)
    return [p.read_bytes() for p in sorted(Path(folder).glob("*.jpg"))] if folder else []


PHOTOS = _photos("LOADTEST_PHOTOS")
HOTDOG_PHOTOS = _photos("LOADTEST_HOTDOG_PHOTOS")


def _tls_context() -> ssl.SSLContext:
    context = gevent.ssl.create_default_context(cafile=CA)
    context.load_cert_chain(CERT, KEY)
    return context


def _error_code(status: int | str) -> str:
    return f"HTTP {status}" if isinstance(status, int) else str(status)


# -- one JSON line per request, for the report -------------------------------------------------------------
_events_file = (
    open(os.environ["LOADTEST_EVENTS"], "a", buffering=1 << 16)  # noqa: SIM115 - open for the whole run
    if os.environ.get("LOADTEST_EVENTS")
    else None
)


_environment = None


@events.init.add_listener
def _keep_environment(environment, **_kwargs) -> None:
    global _environment
    _environment = environment


@events.request.add_listener
def _record(request_type, name, response_time, response_length, exception=None, **_kwargs) -> None:
    if _events_file is not None:
        error = None if exception is None else str(exception).split(":", 1)[0][:60]
        users = _environment.runner.user_count if _environment is not None and _environment.runner else 0
        line = {"t": round(time.time(), 3), "name": f"{request_type} {name}", "ms": round(response_time, 2)}
        _events_file.write(json.dumps(line | {"users": users, "error": error}) + "\n")


@events.quitting.add_listener
def _close(**_kwargs) -> None:
    if _events_file is not None:
        _events_file.flush()


# -- REST users ----------------------------------------------------------------------------------------------
class _RestUser(FastHttpUser):
    abstract = True
    insecure = False
    ssl_context_factory = staticmethod(_tls_context)

    def classify(self, model: str, photo: bytes, name: str, headers: dict | None = None) -> None:
        with self.client.post(
            f"/api/v1/models/{model}/classify",
            data=photo,
            headers={"content-type": "image/jpeg", **(headers or {})},
            name=name,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(_error_code(response.status_code))


class PhotoAppUser(_RestUser):
    wait_time = constant_throughput(RATE)

    @task
    def upload(self) -> None:
        self.classify("mnist", random.choice(PHOTOS), "REST classify mnist")


class HotdogAppUser(_RestUser):
    wait_time = between(2, 6)

    @task
    def upload(self) -> None:
        self.classify("hotdog", random.choice(HOTDOG_PHOTOS or PHOTOS), "REST classify hotdog")


class BrowsingUser(_RestUser):
    """Opens the app (model metadata), takes a photo or two with think time between."""

    wait_time = between(3, 10)

    def on_start(self) -> None:
        self.client.get("/api/v1/models/mnist", name="REST model metadata")

    @task(3)
    def one_photo(self) -> None:
        self.classify("mnist", random.choice(PHOTOS), "REST classify mnist")

    @task(1)
    def look_at_models(self) -> None:
        self.client.get("/api/v1/models", name="REST list models")


class BulkRescoreUser(_RestUser):
    """Re-scores stored photos back to back at the lowest batching priority."""

    wait_time = constant_throughput(RATE * 4)

    @task
    def rescore(self) -> None:
        self.classify("mnist", random.choice(PHOTOS), "REST classify mnist bulk (priority 2)", {"x-priority": "2"})


# -- gRPC users ----------------------------------------------------------------------------------------------
class _GrpcUser(User):
    abstract = True

    def on_start(self) -> None:
        credentials = grpc.ssl_channel_credentials(
            Path(CA).read_bytes(), Path(KEY).read_bytes(), Path(CERT).read_bytes()
        )
        self.channel = grpc.secure_channel(os.environ["LOADTEST_GRPC_TARGET"], credentials)

    def on_stop(self) -> None:
        self.channel.close()

    def call(self, name: str, method, request) -> None:
        started = time.perf_counter()
        exception, length = None, 0
        try:
            length = method(request, timeout=10).ByteSize()
        except grpc.RpcError as error:
            exception = Exception(error.code().name)
        self.environment.events.request.fire(
            request_type="gRPC",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=exception,
            context={},
        )


class GrpcClassifyUser(_GrpcUser):
    wait_time = constant_throughput(RATE)

    def on_start(self) -> None:
        super().on_start()
        self.stub = classifier_pb2_grpc.ClassifierStub(self.channel)

    @task
    def classify(self) -> None:
        request = classifier_pb2.ClassifyRequest(model="mnist", image=random.choice(PHOTOS))
        self.call("Classify mnist", self.stub.Classify, request)


class KServeInferUser(_GrpcUser):
    wait_time = constant_throughput(RATE)

    def on_start(self) -> None:
        super().on_start()
        self.stub = kserve_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        digits = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
        tensor = kserve_pb2.ModelInferRequest().InferInputTensor(name="image", datatype="FP32", shape=[1, 1, 28, 28])
        self.request = kserve_pb2.ModelInferRequest(
            model_name="mnist", inputs=[tensor], raw_input_contents=[digits.tobytes()]
        )

    @task
    def infer(self) -> None:
        self.call("KServe ModelInfer mnist", self.stub.ModelInfer, self.request)


# -- the step ramp -------------------------------------------------------------------------------------------
class StepRamp(LoadTestShape):
    """LOADTEST_STEPS users for LOADTEST_STEP_S seconds each, then stop. Without LOADTEST_STEPS: locust's -u/-t."""

    def tick(self):
        steps = [int(s) for s in os.environ.get("LOADTEST_STEPS", "").split(",") if s]
        if not steps:
            return None if self.runner is None else self._plain()
        step_s = float(os.environ.get("LOADTEST_STEP_S", "20"))
        index = int(self.get_run_time() // step_s)
        if index >= len(steps):
            return None
        return steps[index], max(steps[index], 50)

    def _plain(self):
        options = self.runner.environment.parsed_options
        if options.run_time and self.get_run_time() >= options.run_time:
            return None
        return options.num_users, options.spawn_rate
