"""The REST server follows its settings: an idle keep-alive connection is closed after server.http_keep_alive_s."""

from __future__ import annotations

import socket
import threading
import time

from fastapi import FastAPI

from gateway.config import load_settings
from gateway.ingress.http_server import bind_socket, build_server


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
