"""The HTTP face of the relay: one module per resource, each exporting its routes, over the
services below (ingest, fan-out, outbound, the store). The only package that speaks Starlette.

`application(...)` puts the routes together with the error envelope, request ids and CORS;
the hottest paths go to their own plain ASGI handlers first (`RelayApp`). Every request gets
its access line (relay.runtime.access): the router's through a wrapper, the fast handlers'
written by themselves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from relay.http.errors import HANDLERS, RequestIdMiddleware
from relay.runtime import access


class Resource(Protocol):
    def routes(self) -> Sequence[BaseRoute]: ...


Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]


class FastApp(Protocol):
    """A plain ASGI app for the requests it `serves`, which sets the request id, answers
    errors in the envelope and writes its access line itself."""

    def serves(self, scope: Scope) -> bool: ...

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None: ...


class RelayApp(Starlette):
    """Starlette, except that a request one of the `fast` apps serves goes straight to it
    (through CORS, when configured): a webhook needs none of the router's and the
    middlewares' work, which took more of its time than storing it, and an SSE stream keeps
    its response task, and whatever the middlewares hold, for as long as it is open."""

    fast: Sequence[tuple[Callable[[Scope], bool], ASGIApp]] = ()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # Chosen here rather than in a coroutine of its own: an open stream keeps every frame
        # of its call stack, per subscriber, for as long as it is open.
        if scope["type"] == "http":
            for serves, fast in self.fast:
                if serves(scope):
                    await fast(scope, receive, send)
                    return
            if access.enabled():
                await access.logged(super().__call__, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def application(resources: Sequence[Resource], *, cors_origins: Sequence[str],
                lifespan: Any, fast: Sequence[FastApp] = ()) -> RelayApp:
    """The ASGI app serving `resources`; `lifespan(app)` starts and stops the services;
    `fast` are served before the router."""
    routes = by_path([route for resource in resources for route in resource.routes()])
    middleware = [Middleware(RequestIdMiddleware)]
    cors: dict[str, Any] = {
        "allow_origins": list(cors_origins), "allow_methods": ["GET", "POST", "DELETE"],
        "allow_headers": ["*"], "expose_headers": ["X-Request-ID"]}
    if cors_origins:
        middleware.append(Middleware(CORSMiddleware, **cors))
    app = RelayApp(routes=routes, middleware=middleware, lifespan=lifespan,
                   exception_handlers=dict(HANDLERS))
    app.fast = tuple((handler.serves, _behind_cors(handler, cors) if cors_origins
                      else handler) for handler in fast)
    return app


def _behind_cors(handler: ASGIApp, cors: dict[str, Any]) -> ASGIApp:
    """A fast app behind CORS. The fast apps write their own access lines, but a CORS
    preflight is answered by the middleware before it reaches them: its line is written
    here. It hands back the middleware's coroutine rather than awaiting it: an open stream
    keeps no frame of this."""
    app = CORSMiddleware(handler, **cors)

    def serve(scope: Any, receive: Any, send: Any) -> Awaitable[None]:
        if scope["method"] == "OPTIONS" and access.enabled() and any(
                name == b"access-control-request-method" for name, _ in scope["headers"]):
            return access.logged(app, scope, receive, send)
        return app(scope, receive, send)

    return serve


def by_path(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    """One route per path, dispatching on the method, where resources give a path several:
    a method the path does not take is a 405 whose `Allow` names all the ones it does."""
    grouped: dict[str, list[Route]] = {}
    for route in routes:
        if isinstance(route, Route):
            grouped.setdefault(route.path, []).append(route)
    merged: list[BaseRoute] = []
    for route in routes:
        if not isinstance(route, Route) or len(grouped[route.path]) == 1:
            merged.append(route)
        elif grouped[route.path][0] is route:
            merged.append(_one_route(route.path, grouped[route.path]))
    return merged


def _one_route(path: str, routes: list[Route]) -> Route:
    handlers = {method: route.endpoint for route in routes for method in route.methods or ()}

    async def endpoint(request: Request) -> Response:
        response: Response = await handlers[request.method](request)
        return response

    return Route(path, endpoint, methods=sorted(handlers))


__all__ = ["FastApp", "RelayApp", "Resource", "application", "by_path"]
