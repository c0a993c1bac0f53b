"""The composition root: `create_app` builds the store, the hub and the routes, and wires
them together. Nothing else constructs these; tests build the real app through here."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from relay import __version__
from relay.auth import Access, Tokens
from relay.errors import ApiError, StoreError
from relay.fanout.dashboard import Dashboard
from relay.fanout.hub import Hub
from relay.fanout.jobs_api import JobsApi
from relay.fanout.outbound import Outbound
from relay.fanout.sse import Streams
from relay.fanout.subscriptions_api import SubscriptionsApi
from relay.ingest.cancel import Cancel
from relay.ingest.polling import Polling
from relay.ingest.providers import http_client
from relay.ingest.recorder import Recorder
from relay.ingest.tracking import Tracking
from relay.ingest.webhooks import WebhookReceiver
from relay.metrics import Metrics
from relay.openapi import document
from relay.pages import Pages
from relay.settings import Settings
from relay.store import Store, open_store
from relay.web import RequestIdMiddleware, api_error, error_response, http_error, server_error


def create_app(settings: Settings, *, store: Store | None = None,
               http: httpx.AsyncClient | None = None) -> Starlette:
    """The relay as an ASGI app. `store` and `http` replace the ones `settings` would make."""
    store = store if store is not None else open_store(settings.server.store)
    metrics = Metrics()
    tokens = Tokens(settings.server.secret) if settings.server.secret else Tokens()
    access = Access(settings.server.api_keys, tokens)
    hub = Hub(store, metrics, settings.server.heartbeat)
    recorder = Recorder(store, metrics)
    polling = Polling(settings, store, recorder, metrics)
    webhooks = WebhookReceiver(settings, recorder, tokens, metrics,
                               on_unverified=polling.unverified)
    cancel = Cancel(settings, store, recorder, access, polling.client)
    tracking = Tracking(settings, recorder, access, tokens)
    streams = Streams(store, hub, access, tokens)
    jobs = JobsApi(store, hub, access)
    dashboard = Dashboard(settings, tokens)
    outbound = Outbound(settings, store, metrics)  # ConfigError here for bad [[subscriptions]]
    subscriptions = SubscriptionsApi(store, access, outbound)
    pages = Pages()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.open()
        try:
            if not settings.server.secret:
                tokens.use_secret(await store.secret("relay", lambda: secrets.token_hex(32)))
            await hub.start()
            try:
                await outbound.start()
                async with http_client(http, settings) as client:
                    await polling.start(client)
                    try:
                        yield
                    finally:
                        await polling.stop()
            finally:
                await outbound.stop()
                await hub.stop()
        finally:
            await store.close()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            await store.ping()
        except StoreError as exc:
            return error_response(request, 503, "unavailable", "the store is unreachable",
                                  {"store": str(exc)})
        # A provider refusing our credentials is shown here but keeps the relay ready: every
        # instance shares the config, and webhooks, SSE and other providers still work.
        problems = polling.problems()
        return JSONResponse({"status": "ready", "providers": problems} if problems
                            else {"status": "ready"})

    async def metrics_page(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    api_description = document(__version__)

    async def openapi_page(request: Request) -> Response:
        return JSONResponse(api_description)

    routes = [
        Route("/", dashboard.show),
        Mount("/static", StaticFiles(packages=[("relay", "static")]), name="static"),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_page),
        Route("/openapi.json", openapi_page),
        Route("/docs", pages.docs),
        Route("/client.js", pages.client_js),
        Route("/hooks/{provider}", webhooks.receive, methods=["POST"]),
        Route("/hooks/{provider}/{token}", webhooks.receive, methods=["POST"]),
        Route("/v1/jobs", tracking.track, methods=["POST"]),
        Route("/v1/jobs", jobs.list, methods=["GET"]),
        Route("/v1/jobs/{id}", jobs.get, methods=["GET"]),
        Route("/v1/jobs/{id}/history", jobs.history, methods=["GET"]),
        Route("/v1/jobs/{id}/cancel", cancel.cancel, methods=["POST"]),
        Route("/v1/jobs/{id}/events", streams.job_events, methods=["GET"]),
        Route("/v1/events", streams.events, methods=["GET"]),
        Route("/v1/tokens", streams.create_token, methods=["POST"]),
        Route("/v1/subscriptions", subscriptions.create, methods=["POST"]),
        Route("/v1/subscriptions", subscriptions.list, methods=["GET"]),
        Route("/v1/subscriptions/{id}", subscriptions.get, methods=["GET"]),
        Route("/v1/subscriptions/{id}", subscriptions.delete, methods=["DELETE"]),
        Route("/v1/subscriptions/{id}/deliveries", subscriptions.deliveries, methods=["GET"]),
        Route("/v1/deliveries/{id}/retry", subscriptions.retry, methods=["POST"]),
    ]
    middleware = [Middleware(RequestIdMiddleware)]
    if settings.server.cors_origins:
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=list(settings.server.cors_origins),
            allow_methods=["GET", "POST", "DELETE"], allow_headers=["*"],
            expose_headers=["X-Request-ID"]))
    app = Starlette(
        routes=routes, middleware=middleware, lifespan=lifespan,
        exception_handlers={ApiError: api_error, HTTPException: http_error,
                            StoreError: store_unavailable, Exception: server_error})
    app.state.stopping = hub.stopping
    app.state.store = store
    app.state.metrics = metrics
    app.state.polling = polling
    app.state.outbound = outbound
    return app


async def store_unavailable(request: Request, exc: Exception) -> Response:
    return error_response(request, 503, "unavailable", "the store is unavailable; retry",
                          headers={"Retry-After": "1"})
