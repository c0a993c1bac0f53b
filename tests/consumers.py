"""A downstream consumer of relay's outbound webhooks, served for real on loopback, and the
steps tests take with it: subscribe, post an update, check a delivery's signature."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.config import Settings
from relay.runtime.server import serving
from tests.support import Relay, make_settings

SCALE = 0.005  # the retry schedule in steps of 25 ms, 150 ms, 600 ms, ...
SECRET = "whsec_" + base64.b64encode(bytes(range(24))).decode()


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int
    at: float
    concurrent: int = 1  # requests the consumer held when this one came, itself included

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]

    @property
    def version(self) -> int:
        return int(self.payload["data"]["version"])


@dataclass
class Consumer:
    """A downstream consumer that fails on command: records every request (and how many it
    held at once), answers `answers` first (then `status`), with `headers`, each after
    `delay` seconds (a consumer's own work); with `hang`, never answers until `release`."""

    answers: list[int] = field(default_factory=list)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    holding: int = 0

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.receive, methods=["POST"])])

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        status = self.answers.pop(0) if self.answers else self.status
        self.holding += 1
        try:
            self.received.append(Received(dict(request.headers), body, status,
                                          time.monotonic(), self.holding))
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.hang:
                await self.release.wait()
        finally:
            self.holding -= 1
        return Response(status_code=status, headers=self.headers)

    def delivered(self) -> list[Received]:
        return [r for r in self.received if 200 <= r.status < 300]


@contextlib.asynccontextmanager
async def serving_consumer(consumer: Consumer) -> AsyncIterator[str]:
    async with serving(consumer.app()) as url:
        try:
            yield f"{url}/hook"
        finally:
            consumer.release.set()  # before the server waits for its open requests


def outbound_settings(store: str = "memory://", **server: Any) -> Settings:
    return make_settings(store, allow_private_targets=True, delivery_retry_scale=SCALE,
                         **server)


async def subscribe(relay: Relay, url: str, **fields: Any) -> dict[str, Any]:
    answer = await relay.client.post("/v1/subscriptions", json={"url": url, **fields})
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def deliveries(relay: Relay, subscription_id: str) -> list[dict[str, Any]]:
    answer = await relay.client.get(f"/v1/subscriptions/{subscription_id}/deliveries")
    assert answer.status_code == 200, answer.text
    return answer.json()["deliveries"]  # type: ignore[no-any-return]


async def update(relay: Relay, external_id: str, status: str = "PROCESSING",
                 percent: int | None = None) -> str:
    payload: dict[str, Any] = {"id": external_id, "status": status}
    if percent is not None:
        payload["progress_percent"] = percent
    answer = await relay.webhook(payload)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["cursor"])


def verified(secret: str, received: Received) -> dict[str, Any]:
    return Webhook(secret).verify(received.body, received.headers)  # type: ignore[no-any-return]
