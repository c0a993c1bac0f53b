"""The composition root: `create_app` builds every part of the relay from the settings, gives
each the slice of configuration it uses, and wires them together. Nothing else constructs
them; tests build the real app through here.

    store ◄── recorder ◄── webhook ingest, tracking, cancel, poll scheduler
      │                     error catalogs ──► provider clients (polls)
      │
      ├──► hub ──► SSE streams, long-polls
      ├──► outbound service ──► downstream consumers
      └──◄ retention (hourly: deletes the jobs finished longer ago than it keeps)
    relay.http: one resource per part of the API, over the services above
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette

from relay.config import Settings
from relay.fanout.hub import Hub
from relay.fanout.stream import Streams
from relay.http import RelayApp, application
from relay.http.auth import Access
from relay.http.dashboard import Dashboard
from relay.http.events import Events
from relay.http.hooks import Hooks
from relay.http.jobs import Jobs
from relay.http.operations import Operations
from relay.http.pages import Pages
from relay.http.providers import Providers
from relay.http.subscriptions import Subscriptions
from relay.ingest.cancel import Cancel
from relay.ingest.catalogs import Catalogs
from relay.ingest.providers import ProviderClients
from relay.ingest.recorder import Recorder
from relay.ingest.tracking import Tracking
from relay.ingest.webhooks import WebhookIngest
from relay.outbound.service import Outbound
from relay.polling.scheduler import Scheduler
from relay.runtime.metrics import Metrics
from relay.store import Store, open_store
from relay.store.retention import Retention
from relay.tokens import Tokens


def create_app(settings: Settings, *, store: Store | None = None,
               http: httpx.AsyncClient | None = None) -> RelayApp:
    """The relay as an ASGI app. `store` and `http` replace the ones `settings` would make."""
    server, providers = settings.server, settings.providers
    store = store if store is not None else open_store(server.store)
    metrics = Metrics()
    tokens = Tokens(server.secret) if server.secret else Tokens()
    access = Access(server.api_keys, tokens)
    hub = Hub(store, metrics, server.heartbeat)
    recorder = Recorder(store, metrics)
    catalogs = Catalogs(metrics)
    clients = ProviderClients(providers, http, catalogs)

    def announce(kind: str, data: dict[str, Any]) -> None:
        """An operational event (topic relay:ops): to the SSE streams of the topic (of every
        instance, on Redis) and to the subscriptions that name it. Not in the log: see
        ARCHITECTURE.md."""
        metrics.ops_events.labels(kind).inc()
        hub.announce(kind, data)
        outbound.announce(kind, data)

    scheduler = Scheduler(providers, store, recorder, clients, metrics,
                          public_url=server.public_url, announce=announce)
    ingest = WebhookIngest(providers, recorder, tokens, metrics, catalogs=catalogs,
                           on_unverified=scheduler.unverified)
    tracking = Tracking(providers, recorder, tokens, server.public_url)
    cancel = Cancel(providers, store, recorder, clients)
    outbound = Outbound(settings.outbound, store, metrics,  # ConfigError: bad [[subscriptions]]
                        on_ops=announce)
    retention = Retention(store, server.retention)
    if server.retention:
        store.dedupe_window = min(store.dedupe_window, server.retention)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as running:
            await store.open()
            running.push_async_callback(store.close)
            if not server.secret:
                tokens.use_secret(await store.secret("relay", lambda: secrets.token_hex(32)))
            await hub.start()
            running.push_async_callback(hub.stop)
            await outbound.start()
            running.push_async_callback(outbound.stop)
            clients.open()
            running.push_async_callback(clients.close)
            catalogs.start(clients.catalog_sources())
            running.push_async_callback(catalogs.stop)
            await scheduler.start()
            running.push_async_callback(scheduler.stop)
            retention.start()
            running.push_async_callback(retention.stop)
            yield

    hooks = Hooks(ingest, server.max_body)
    events = Events(store, Streams(hub, store), access, tokens)
    app = application([
        Dashboard(list(providers), access),
        Operations(store, metrics, scheduler.problems),
        Pages(),
        hooks,
        Jobs(store, hub, access, tracking, cancel),
        events,
        Subscriptions(store.outbox, access, outbound),
        Providers(providers, store, metrics, access, scheduler.health),
    ], cors_origins=server.cors_origins, lifespan=lifespan, fast=[hooks, events])
    app.state.stopping = hub.stopping
    app.state.store = store
    app.state.outbound = outbound
    app.state.catalogs = catalogs
    app.state.retention = retention
    return app
