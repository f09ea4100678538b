"""The floor under the gateway's gRPC surfaces: a bare gRPC server with mTLS that answers KServe ``ModelInfer``
with a canned response, nothing else (no interceptor, no parsing of the tensor, no model, no log).

``gateway bench overhead`` drives it like a gateway surface (same load generator, same certificates, CPU from
/proc) and prints it as rows of its own, so the gap between the gateway and what grpcio itself costs per call
is measured in the same run. Modes, to choose the server on measurement:

- ``aio``: grpc.aio on uvloop, as the gateway serves;
- ``aio-asyncio``: grpc.aio on the stdlib event loop;
- ``sync``: the thread-pool server (``grpc.server``), the handler answering on its pool thread;
- ``sync-handoff``: the thread-pool server handing each call to an asyncio loop in another thread and waiting
  (what serving the gateway's asyncio data plane from a sync server would cost at least).

Run as ``python -m gateway.bench.grpc_floor MODE CA CERT KEY``: it binds a free loopback port, prints it on
stdout, and serves until stdin closes.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

MODES = ("aio", "aio-asyncio", "sync", "sync-handoff")


def canned_answer() -> service_pb2.ModelInferResponse:
    """What the gateway answers for one MNIST row: ten FP32 probabilities."""
    response = service_pb2.ModelInferResponse(model_name="mnist", model_version="1")
    output = response.outputs.add()
    output.name, output.datatype = "probabilities", "FP32"
    output.shape.extend([1, 10])
    response.raw_output_contents.append(bytes(40))
    return response


def _credentials(ca: str, cert: str, key: str) -> grpc.ServerCredentials:
    with open(ca, "rb") as c, open(cert, "rb") as s, open(key, "rb") as k:
        return grpc.ssl_server_credentials([(k.read(), s.read())], c.read(), require_client_auth=True)


class _Canned(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self) -> None:
        self._answer = canned_answer()

    def ModelInfer(self, request, context):  # noqa: N802 - the RPC's name
        return self._answer


class _CannedAio(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self) -> None:
        self._answer = canned_answer()

    async def ModelInfer(self, request, context):  # noqa: N802
        return self._answer


class _Handoff(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Each call answered by a coroutine on an event loop of its own thread, the pool thread waiting for it."""

    def __init__(self) -> None:
        self._answer = canned_answer()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()

    async def _answer_on_loop(self) -> service_pb2.ModelInferResponse:
        return self._answer

    def ModelInfer(self, request, context):  # noqa: N802
        return asyncio.run_coroutine_threadsafe(self._answer_on_loop(), self._loop).result()


def _wait_for_stdin_to_close() -> None:
    sys.stdin.read()


async def _serve_aio(credentials: grpc.ServerCredentials) -> None:
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_CannedAio(), server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, _wait_for_stdin_to_close)
    await server.stop(None)


def serve(mode: str, ca: str, cert: str, key: str) -> None:
    credentials = _credentials(ca, cert, key)
    if mode == "aio":
        import uvloop

        uvloop.run(_serve_aio(credentials))
        return
    if mode == "aio-asyncio":
        asyncio.run(_serve_aio(credentials))
        return
    server = grpc.server(ThreadPoolExecutor(max_workers=16))
    servicer = _Handoff() if mode == "sync-handoff" else _Canned()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    print(port, flush=True)
    _wait_for_stdin_to_close()
    server.stop(None)


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] not in MODES:
        sys.exit(f"usage: python -m gateway.bench.grpc_floor {{{'|'.join(MODES)}}} CA CERT KEY")
    serve(*sys.argv[1:])
