"""The REST server follows its settings: an idle keep-alive connection is closed after server.http_keep_alive_s."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

from fastapi import FastAPI

from gateway.config import load_settings
from gateway.ingress.http_server import OneWritePerStep, bind_socket, build_server


def test_an_idle_keep_alive_connection_is_closed_after_the_configured_time() -> None:
    keep_alive_s = 0.3
    settings = load_settings(
        environ={"GATEWAY_TLS_ENABLED": "false", "GATEWAY_SERVER_HTTP_KEEP_ALIVE_S": str(keep_alive_s)}
    )
    app = FastAPI()
    app.get("/ping")(lambda: {"pong": True})
    server = build_server(app, settings)
    sock = bind_socket("127.0.0.1", 0)
    serving = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    serving.start()
    try:
        with socket.create_connection(sock.getsockname(), timeout=30) as connection:
            connection.sendall(b"GET /ping HTTP/1.1\r\nHost: gateway\r\n\r\n")  # the socket listens already
            answer = b""
            while not answer.endswith(b'{"pong":true}'):
                chunk = connection.recv(65536)
                assert chunk, answer
                answer += chunk
            idle_since = time.monotonic()
            assert answer.startswith(b"HTTP/1.1 200 OK"), answer
            assert connection.recv(65536) == b"", "the server sent more than one answer"  # blocks until it closes
            idle_s = time.monotonic() - idle_since
        assert keep_alive_s <= idle_s + 0.05, f"closed after {idle_s:.2f} s, before the keep-alive time"
        assert idle_s < 2.5, f"closed after {idle_s:.2f} s: nearer uvicorn's 5 s default than the setting"
    finally:
        server.should_exit = True
        serving.join(15)
        sock.close()


def _read_answer(connection: socket.socket) -> bytes:
    answer = b""
    while not answer.endswith(b'{"pong":true}'):
        chunk = connection.recv(65536)
        if not chunk:
            return answer
        answer += chunk
    return answer


def _wait_until_refused(address: tuple[str, int]) -> None:
    """Until the listener is closed; uvicorn asks every open connection to shut down in the same step."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(address, timeout=1).close()
        except (ConnectionRefusedError, ConnectionResetError):  # reset: accepted into the backlog, then closed
            return
    raise AssertionError("the server kept accepting connections after it was told to exit")


def test_a_request_on_an_idle_keep_alive_connection_during_shutdown_is_answered_with_connection_close() -> None:
    settings = load_settings(environ={"GATEWAY_TLS_ENABLED": "false"})
    app = FastAPI()
    app.get("/ping")(lambda: {"pong": True})
    server = build_server(app, settings)
    sock = bind_socket("127.0.0.1", 0)
    address = sock.getsockname()
    serving = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    serving.start()
    try:
        with socket.create_connection(address, timeout=30) as connection:
            connection.sendall(b"GET /ping HTTP/1.1\r\nHost: gateway\r\n\r\n")
            assert _read_answer(connection).startswith(b"HTTP/1.1 200 OK")
            server.should_exit = True
            _wait_until_refused(address)  # shutdown has begun, and this connection is idle in it
            connection.sendall(b"GET /ping HTTP/1.1\r\nHost: gateway\r\n\r\n")
            answer = _read_answer(connection)
            assert answer.startswith(b"HTTP/1.1 200 OK"), f"the request sent during shutdown got {answer!r}"
            assert b"connection: close" in answer.lower(), answer
            assert connection.recv(65536) == b"", "the server kept the connection open after Connection: close"
    finally:
        server.should_exit = True
        serving.join(15)
        sock.close()


class _RecordingTransport:
    """What the connection's real transport was asked to do, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes | None]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", None))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


def test_the_writes_of_one_step_leave_as_one_write_on_the_loops_next_turn() -> None:
    async def scenario() -> list:
        transport = _RecordingTransport()
        writes = OneWritePerStep(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        writes.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        writes.write(b"{}")
        assert transport.calls == [], "written before the step ended"
        await asyncio.sleep(0)
        writes.write(b"next")
        await asyncio.sleep(0)
        return transport.calls

    assert asyncio.run(scenario()) == [
        ("write", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"),
        ("write", b"next"),
    ]


def test_close_sends_what_waits_and_abort_drops_it() -> None:
    async def scenario() -> tuple[list, list, str]:
        closed, aborted = _RecordingTransport(), _RecordingTransport()
        loop = asyncio.get_running_loop()
        closing, aborting = OneWritePerStep(closed, loop), OneWritePerStep(aborted, loop)  # type: ignore[arg-type]
        closing.write(b"last answer")
        closing.close()
        aborting.write(b"dropped")
        aborting.abort()
        await asyncio.sleep(0)
        return closed.calls, aborted.calls, closing.get_extra_info("peercert")

    closed, aborted, info = asyncio.run(scenario())
    assert closed == [("write", b"last answer"), ("close", None)]
    assert aborted == [("abort", None)]
    assert info == "info peercert"  # everything else is the transport's
