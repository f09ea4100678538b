"""A plain-HTTP port for probes and scrapes that cannot present a client certificate.

The kubelet's HTTP probes and most Prometheus setups speak plain HTTP. This port answers
``/healthz`` (the process serves), ``/readyz`` (every model is loaded) and ``/metrics``, and
nothing else: no model, no prediction and no admin action is reachable without mTLS. It is off
unless ``server.health_port`` is set.
"""

from __future__ import annotations

import socket
from typing import Protocol

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.ingress.http_server import bind_socket
from gateway.monitoring.metrics import PROMETHEUS_CONTENT_TYPE, GatewayMetrics


class Probed(Protocol):
    """What the probes read: the built gateway (gateway.app.Gateway)."""

    @property
    def ready(self) -> bool: ...

    @property
    def metrics(self) -> GatewayMetrics: ...

    def model_names(self) -> list[str]: ...


def readiness(gateway: Probed) -> JSONResponse:
    """The /readyz answer on both ports: 200 once every model is loaded, else 503."""
    ready = gateway.ready
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "models": gateway.model_names()},
        status_code=200 if ready else 503,
    )


def create_health_app(gateway: Probed) -> Starlette:
    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "live"})

    async def readyz(_: Request) -> JSONResponse:
        return readiness(gateway)

    async def metrics(_: Request) -> Response:
        return Response(gateway.metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )


class HealthServer:
    """Serves the health app on its own socket inside the gateway's event loop.

    Started and stopped by the gateway (no signal handling of its own: the main server owns
    SIGTERM, and stops this one after it has drained).
    """

    def __init__(self, gateway: Probed, host: str, port: int, *, reuse_port: bool = False) -> None:
        self._socket: socket.socket = bind_socket(host, port, reuse_port=reuse_port)
        config = uvicorn.Config(
            create_health_app(gateway), lifespan="off", log_level="warning", log_config=None, access_log=False
        )
        self._server = uvicorn.Server(config)

    @property
    def port(self) -> int:
        return self._socket.getsockname()[1]

    async def start(self) -> None:
        if not self._server.config.loaded:
            self._server.config.load()
        self._server.lifespan = self._server.config.lifespan_class(self._server.config)
        await self._server.startup(sockets=[self._socket])

    async def stop(self) -> None:
        self._server.should_exit = True
        await self._server.shutdown(sockets=[self._socket])
