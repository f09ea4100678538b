"""The hot routes (photo classify, KServe v2 infer, TF Serving predict) served without FastAPI's request path.

FastAPI answers a request through its middleware stack, its router (each route's pattern in turn, the
mounted surfaces' too), the dependency solver (a pydantic validation per parameter) and an exit stack
per request: about a third of a KServe HTTP call's CPU (py-spy, docs/performance.md). Here the same
handler is called by the middleware below (the application's first after Starlette's server-error
middleware) when the request is a POST to a hot route and every parameter is a plain value this module
parses exactly as FastAPI would. Anything else
goes to FastAPI unchanged, before a byte of the body is read: any other route, a parameter FastAPI
would refuse (its 400 says why), and every request while tracing is on (FastAPI's telemetry makes the
request's SERVER span). Errors from the handler are answered by the surface's own exception handlers
(``http_common.error_handlers``), so an error answer is the same whichever path served the request.
FastAPI still declares the hot routes, so the OpenAPI document describes them.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.core.errors import GatewayError
from gateway.monitoring.tracing import TRACING

Arguments = dict[str, Any]
"""Keyword arguments of a hot route's handler, beside the request and the path parameters."""
ParseArguments = Callable[[Scope], Arguments | None]
"""The query and header parameters of a request, or None when FastAPI should answer it."""
ExceptionHandlers = dict[Any, Callable[[Request, Exception], Awaitable[Response]]]


def no_arguments(_scope: Scope) -> Arguments:
    return {}


@dataclass(frozen=True)
class HotRoute:
    """``handler(request, **path parameters, **arguments)`` for a POST whose route path matches ``path``."""

    path: re.Pattern[str]
    """The whole route path (``fullmatch``); its named groups are the path parameters (``[^/]+``, as FastAPI's)."""
    handler: Callable[..., Awaitable[Response]]
    errors: ExceptionHandlers
    """The surface's exception handlers (``error_handlers(...)``): they answer what the handler raises."""
    arguments: ParseArguments = no_arguments


def route_pattern(template: str) -> re.Pattern[str]:
    """``/v2/models/{model}/infer`` as a pattern with the named group ``model`` (Starlette's str convertor)."""
    return re.compile(re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template))


class HotRoutes:
    """ASGI middleware serving the hot routes of one application (``app.add_middleware(HotRoutes, routes=...)``);
    every other request goes on to ``app``."""

    def __init__(self, app: ASGIApp, routes: Iterable[HotRoute]) -> None:
        self._app = app
        self._routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.find(scope) if scope["type"] == "http" and not TRACING.on else None
        if found is None:
            await self._app(scope, receive, send)
        else:
            await self.serve(*found, scope, receive, send)

    def find(self, scope: Scope) -> tuple[HotRoute, Arguments] | None:
        if scope["method"] != "POST" or scope.get("root_path"):
            return None
        path = scope["path"]
        for route in self._routes:
            match = route.path.fullmatch(path)
            if match is not None:
                arguments = route.arguments(scope)
                return None if arguments is None else (route, {**match.groupdict(), **arguments})
        return None

    @staticmethod
    async def serve(route: HotRoute, arguments: Arguments, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the handler; a GatewayError is answered as FastAPI's exception middleware would, anything else
        as the surface's server-error middleware does (its 500 answer, then raised again for the server to log;
        Starlette's outer one sees the answer sent and only raises it on)."""
        request = Request(scope, receive)
        try:
            response = await route.handler(request, **arguments)
        except GatewayError as exc:
            response = await route.errors[GatewayError](request, exc)
        except Exception as exc:
            response = await route.errors[Exception](request, exc)
            await response(scope, receive, send)
            raise
        await response(scope, receive, send)


def query_values(scope: Scope) -> dict[str, str]:
    """The query parameters, the last of each name winning (as Starlette's ``QueryParams.get``)."""
    query = scope["query_string"]
    return dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True)) if query else {}


def header_values(scope: Scope, names: frozenset[bytes]) -> dict[bytes, str]:
    """The first value of each header in ``names`` (lower case), as Starlette's ``Headers.get``."""
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in names and name not in found:
            found[name] = value.decode("latin-1")
    return found


_POSITIVE = re.compile(r"[1-9][0-9]{0,8}")


def bounded_int(text: str | None, low: int, high: int) -> tuple[bool, int | None]:
    """(whether ``text`` is absent or a plain decimal in [low, high], its value); anything else is FastAPI's to
    judge (pydantic accepts more spellings, and refuses with its own message)."""
    if text is None:
        return True, None
    if _POSITIVE.fullmatch(text) is None:
        return False, None
    value = int(text)
    return low <= value <= high, value
