"""What operators and their tools call: `/healthz` (alive), `/readyz` (the store answers;
which providers polling cannot reach), `/metrics` (Prometheus text) and `/openapi.json`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay import __version__
from relay.errors import StoreError
from relay.http.errors import error_response
from relay.http.openapi import document
from relay.runtime.metrics import Metrics
from relay.store import Store


class Operations:
    """`problems()` names the providers polling cannot reach as it should."""

    def __init__(self, store: Store, metrics: Metrics,
                 problems: Callable[[], Mapping[str, Any]]) -> None:
        self.store = store
        self.metrics = metrics
        self.problems = problems
        self.description = document(__version__)

    def routes(self) -> list[Route]:
        return [Route("/healthz", self.healthz), Route("/readyz", self.readyz),
                Route("/metrics", self.metrics_page), Route("/openapi.json", self.openapi)]

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        try:
            await self.store.ping()
        except StoreError as exc:
            return error_response(request, 503, "unavailable", "the store is unreachable",
                                  {"store": str(exc)})
        # A provider refusing our credentials is shown here but keeps the relay ready: every
        # instance shares the config, and webhooks, SSE and other providers still work.
        problems = self.problems()
        return JSONResponse({"status": "ready", "providers": problems} if problems
                            else {"status": "ready"})

    async def metrics_page(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(self.description)
