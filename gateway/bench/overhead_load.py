"""The load generator of `gateway bench overhead`, run as its own process so its CPU is not the gateway's.

``python -m gateway.bench.overhead_load`` reads one job (JSON) on stdin and, for ``warmup_s +
duration_s`` seconds, either keeps ``clients`` requests in flight over as many keep-alive
connections (HTTP/1.1 over TLS, or one gRPC channel each with its own subchannel: a closed
loop), or, with a ``rate``, sends requests at Poisson arrivals of that rate over a pool of
those connections (an open loop: a request that finds every connection busy waits for one,
and its latency counts from its scheduled arrival, so a slow server is not hidden by a
slower client). It prints one JSON line: requests answered inside the measured window per
second, p50, p99, errors, every answer counted (warm-up included, for CPU per request) and
its own CPU seconds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import resource
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import numpy as np

from gateway.bench.http_load import Connection
from gateway.bench.load_loops import Send, Window, closed_loop, open_loop
from gateway.security.tls import client_context


@dataclass
class Job:
    surface: str
    """rest | grpc-classify | kserve-grpc | kserve-http | tfs-grpc"""
    base_url: str
    grpc_target: str
    ca: str
    cert: str
    key: str
    model: str
    payloads: list[bytes]
    """Photos (REST, gRPC Classify) or one row's raw little-endian FP32 bytes (tensor surfaces)."""
    content_type: str = "image/jpeg"
    shape: list[int] = field(default_factory=list)
    clients: int = 64
    warmup_s: float = 2.0
    duration_s: float = 8.0
    rate: float = 0.0
    """Open-loop arrivals per second; 0: a closed loop of ``clients`` requests in flight."""

    @classmethod
    def from_json(cls, text: str) -> Job:
        fields = json.loads(text)
        fields["payloads"] = [base64.b64decode(p) for p in fields["payloads"]]
        return cls(**fields)

    def to_json(self) -> str:
        fields = dict(self.__dict__)
        fields["payloads"] = [base64.b64encode(p).decode() for p in self.payloads]
        return json.dumps(fields)


async def _http_calls(job: Job) -> tuple[Send, Callable[[], Awaitable[None]]]:
    context = client_context(job.ca, job.cert, job.key)
    connections = [await Connection.open(job.base_url, context) for _ in range(job.clients)]
    if job.surface == "rest":
        path, content_type = f"/api/v1/models/{job.model}/classify", job.content_type
        bodies, headers = job.payloads, None
    else:  # KServe HTTP with the binary tensor extension: JSON header, then the raw row
        path, content_type = f"/v2/models/{job.model}/infer", "application/octet-stream"
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "FP32",
                        "shape": job.shape,
                        "parameters": {"binary_data_size": len(job.payloads[0])},
                    }
                ],
                "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
            }
        ).encode()
        bodies, headers = [header + job.payloads[0]], {"Inference-Header-Content-Length": str(len(header))}

    async def call(index: int, sequence: int) -> bool:
        body = bodies[sequence % len(bodies)]
        status, _ = await connections[index].post(path, body, content_type, headers)
        return status == 200

    async def close() -> None:
        for connection in connections:
            await connection.close()

    return call, close


def _grpc_calls(job: Job) -> tuple[Send, Callable[[], Awaitable[None]]]:
    with open(job.ca, "rb") as ca, open(job.key, "rb") as key, open(job.cert, "rb") as cert:
        credentials = grpc.ssl_channel_credentials(ca.read(), key.read(), cert.read())
    options = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per channel
    channels = [grpc.aio.secure_channel(job.grpc_target, credentials, options=options) for _ in range(job.clients)]
    if job.surface == "grpc-classify":
        from gateway.v1 import classifier_pb2, classifier_pb2_grpc

        stubs = [classifier_pb2_grpc.ClassifierStub(c).Classify for c in channels]
        requests = [classifier_pb2.ClassifyRequest(model=job.model, image=p) for p in job.payloads]
    elif job.surface == "kserve-grpc":
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        stubs = [service_pb2_grpc.GRPCInferenceServiceStub(c).ModelInfer for c in channels]
        tensor = service_pb2.ModelInferRequest.InferInputTensor(name="image", datatype="FP32", shape=job.shape)
        requests = [
            service_pb2.ModelInferRequest(model_name=job.model, inputs=[tensor], raw_input_contents=job.payloads)
        ]
    else:  # tfs-grpc
        from gateway.tfs import serving_pb2, serving_pb2_grpc, tensor_pb2

        stubs = [serving_pb2_grpc.PredictionServiceStub(c).Predict for c in channels]
        shape = tensor_pb2.TensorShapeProto(dim=[tensor_pb2.TensorShapeProto.Dim(size=d) for d in job.shape])
        tensor = tensor_pb2.TensorProto(dtype=tensor_pb2.DT_FLOAT, tensor_shape=shape, tensor_content=job.payloads[0])
        requests = [
            serving_pb2.PredictRequest(model_spec=serving_pb2.ModelSpec(name=job.model), inputs={"image": tensor})
        ]

    async def call(index: int, sequence: int) -> bool:
        request = requests[sequence % len(requests)]
        try:
            await stubs[index](request, timeout=30)
        except grpc.aio.AioRpcError:
            return False
        return True

    async def close() -> None:
        for channel in channels:
            await channel.close()

    return call, close


async def run(job: Job) -> dict:
    if job.surface in ("rest", "kserve-http"):
        call, close = await _http_calls(job)
    else:
        call, close = _grpc_calls(job)
    start = asyncio.get_running_loop().time() + job.warmup_s
    window = Window(start, start + job.duration_s)
    if job.rate > 0:
        await open_loop(call, job.clients, job.rate, window)
    else:
        await closed_loop(call, job.clients, window)
    await close()
    ordered = np.array(window.latencies or [float("nan")]) * 1000
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "rps": len(window.latencies) / job.duration_s,
        "p50_ms": float(np.percentile(ordered, 50)),
        "p99_ms": float(np.percentile(ordered, 99)),
        "errors": window.errors,
        "answered": window.answered,
        "client_cpu_s": usage.ru_utime + usage.ru_stime,
    }


def main() -> int:
    job = Job.from_json(sys.stdin.read())
    import uvloop

    print(json.dumps(uvloop.run(run(job))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
