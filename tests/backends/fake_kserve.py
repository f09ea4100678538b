"""A KServe v2 ModelInfer server in the test's event loop (answers zeros, keeps each call's metadata), and a
TCP relay that holds back the server's first bytes: a model server whose handshake is slow, not dead."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from tritonclient.grpc import service_pb2


@dataclass
class FakeKServe:
    endpoint: str
    metadata: list[dict[str, str]] = field(default_factory=list)
    """The invocation metadata of every ModelInfer call, in order."""


@contextlib.asynccontextmanager
async def fake_kserve(outputs: int = 10) -> AsyncIterator[FakeKServe]:
    """A plaintext server on a free loopback port whose ModelInfer answers ``outputs`` zeros per row."""
    server = grpc.aio.server()
    fake = FakeKServe("")

    async def model_infer(request: service_pb2.ModelInferRequest, context: grpc.aio.ServicerContext):
        fake.metadata.append(dict(context.invocation_metadata()))
        rows = request.inputs[0].shape[0]
        output = service_pb2.ModelInferResponse.InferOutputTensor(name="probabilities", datatype="FP32")
        output.shape.extend([rows, outputs])
        return service_pb2.ModelInferResponse(outputs=[output], raw_output_contents=[bytes(rows * outputs * 4)])

    handler = grpc.unary_unary_rpc_method_handler(
        model_infer,
        request_deserializer=service_pb2.ModelInferRequest.FromString,
        response_serializer=service_pb2.ModelInferResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": handler})]
    )
    fake.endpoint = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    try:
        yield fake
    finally:
        await server.stop(None)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold: asyncio.Event | None) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            if hold is not None:
                await hold.wait()
            writer.write(data)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def slow_handshake(upstream: str, delay_s: float) -> AsyncIterator[str]:
    """A relay to ``upstream`` (host:port) that passes on nothing from it for ``delay_s`` after each connection
    opens (so the client sees the server's HTTP/2 SETTINGS that late); yields the relay's own host:port."""
    host, port = upstream.rsplit(":", 1)
    tasks: set[asyncio.Task] = set()

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(host, int(port))
        hold = asyncio.Event()
        asyncio.get_running_loop().call_later(delay_s, hold.set)
        await asyncio.gather(_pipe(client_reader, server_writer, None), _pipe(server_reader, client_writer, hold))

    def start(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(relay(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(start, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
