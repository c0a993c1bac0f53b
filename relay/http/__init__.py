"""The HTTP face of the relay: one module per resource, each exporting its routes, over the
services below (ingest, fan-out, outbound, the store). The only package that speaks Starlette.

`application(...)` puts the routes together with the error envelope, request ids and CORS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute

from relay.http.errors import HANDLERS, RequestIdMiddleware


class Resource(Protocol):
    def routes(self) -> Sequence[BaseRoute]: ...


def application(resources: Sequence[Resource], *, cors_origins: Sequence[str],
                lifespan: Any) -> Starlette:
    """The ASGI app serving `resources`; `lifespan(app)` starts and stops the services."""
    routes = [route for resource in resources for route in resource.routes()]
    middleware = [Middleware(RequestIdMiddleware)]
    if cors_origins:
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "DELETE"], allow_headers=["*"],
            expose_headers=["X-Request-ID"]))
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                     exception_handlers=dict(HANDLERS))


__all__ = ["Resource", "application"]
