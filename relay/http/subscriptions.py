"""The subscriptions API: outbound webhook subscriptions and what became of their deliveries.

    POST   /v1/subscriptions                  {"url", "topics"?, "events"?, "secret"?}: 201,
                                              the secret shown once
    GET    /v1/subscriptions                  every subscription (never a secret)
    GET    /v1/subscriptions/{id}             one
    DELETE /v1/subscriptions/{id}             204 (409 for one this instance's config declares)
    POST   /v1/subscriptions/{id}/enable      active again: 200
    POST   /v1/subscriptions/{id}/replay      {"since", "only_failed"?}: 202 {"replayed", ...}
    GET    /v1/subscriptions/{id}/deliveries  ?status=&limit=, newest first, with attempts
    POST   /v1/deliveries/{id}/retry          a failed delivery, pending again
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.errors import ApiError, TargetError
from relay.http.auth import Access
from relay.http.requests import invalid, read_object, topics_field, whole_number
from relay.limits import DELIVERIES_PAGE_DEFAULT, DELIVERIES_PAGE_MAX, TOPICS_PER_SUBSCRIPTION
from relay.models import isoformat, utcnow
from relay.outbound.service import Outbound
from relay.outbound.targets import url_problem
from relay.signing import new_secret, signing_key
from relay.store.outbox import (
    Delivery,
    DeliveryStatus,
    EventKind,
    Health,
    Outbox,
    Retried,
    Subscription,
    events_problem,
)

_RETRY_REFUSED = {
    Retried.MISSING: (404, "not_found", "no such delivery"),
    Retried.NOT_FAILED: (409, "not_failed", "only a failed delivery can be retried"),
    Retried.NEWER: (409, "superseded", "a newer update of this job was delivered or is on its "
                    "way; sending this one again would take the job back in time"),
}


class Subscriptions:
    def __init__(self, outbox: Outbox, access: Access, outbound: Outbound) -> None:
        self.outbox = outbox
        self.access = access
        self.outbound = outbound

    def routes(self) -> list[Route]:
        return [Route("/v1/subscriptions", self.create, methods=["POST"]),
                Route("/v1/subscriptions", self.list, methods=["GET"]),
                Route("/v1/subscriptions/{id}", self.get, methods=["GET"]),
                Route("/v1/subscriptions/{id}", self.delete, methods=["DELETE"]),
                Route("/v1/subscriptions/{id}/enable", self.enable, methods=["POST"]),
                Route("/v1/subscriptions/{id}/replay", self.replay, methods=["POST"]),
                Route("/v1/subscriptions/{id}/deliveries", self.deliveries, methods=["GET"]),
                Route("/v1/deliveries/{id}/retry", self.retry, methods=["POST"])]

    async def create(self, request: Request) -> Response:
        """`POST /v1/subscriptions`: the answer is the only one that shows the secret."""
        outbox = self._authorised(request)
        body = await read_object(request)
        url = _url(body)
        topics = topics_field(body, "topics", TOPICS_PER_SUBSCRIPTION, least=1, default=["*"])
        events = _events(body)
        secret = _secret(body)
        await self._check_target(url)
        now = utcnow()
        subscription = Subscription(f"sub_{secrets.token_hex(12)}", url, tuple(topics), secret,
                                    created_at=isoformat(now), events=events,
                                    health=Health(since=now.timestamp()))
        await outbox.save_subscription(subscription)
        self.outbound.changed()
        return JSONResponse({**subscription.to_dict(), "secret": secret}, status_code=201)

    async def list(self, request: Request) -> Response:
        outbox = self._authorised(request)
        found = await outbox.subscriptions()
        return JSONResponse({"subscriptions": [s.to_dict() for s in found]})

    async def get(self, request: Request) -> Response:
        outbox = self._authorised(request)
        return JSONResponse((await _subscription(outbox, request)).to_dict())

    async def delete(self, request: Request) -> Response:
        outbox = self._authorised(request)
        subscription = await _subscription(outbox, request)
        if self.outbound.declares(subscription.id):
            raise ApiError("this subscription is defined in this instance's configuration; "
                           "remove it there", status=409, code="config_subscription")
        await outbox.delete_subscription(subscription.id)
        self.outbound.changed()
        return Response(status_code=204)

    async def enable(self, request: Request) -> Response:
        """`POST /v1/subscriptions/{id}/enable`: active again, from failing or disabled."""
        self._authorised(request)
        enabled = await self.outbound.enable(request.path_params["id"])
        if enabled is None:
            raise ApiError("no such subscription", status=404, code="not_found")
        return JSONResponse(enabled.to_dict())

    async def replay(self, request: Request) -> Response:
        """`POST /v1/subscriptions/{id}/replay {"since", "only_failed"?}`."""
        outbox = self._authorised(request)
        body = await read_object(request)
        since, only_failed = _since(body), _flag(body, "only_failed")
        subscription = await _subscription(outbox, request)
        if not subscription.enabled:
            raise ApiError("the subscription is disabled; enable it first "
                           "(POST /v1/subscriptions/{id}/enable)", status=409,
                           code="subscription_disabled")
        replayed = await self.outbound.replay(subscription.id, since, only_failed=only_failed)
        return JSONResponse({"replayed": replayed.count, "truncated": replayed.truncated},
                            status_code=202)

    async def deliveries(self, request: Request) -> Response:
        """`GET /v1/subscriptions/{id}/deliveries?status=&limit=`: newest first."""
        outbox = self._authorised(request)
        subscription = await _subscription(outbox, request)
        params = request.query_params
        limit = whole_number(params.get("limit"), "limit", DELIVERIES_PAGE_DEFAULT, 1,
                             DELIVERIES_PAGE_MAX)
        found = await outbox.deliveries(subscription.id, limit, _status(params.get("status")))
        return JSONResponse({"deliveries": [delivery_json(d) for d in found]})

    async def retry(self, request: Request) -> Response:
        """`POST /v1/deliveries/{id}/retry`: a failed delivery, due again now, with a fresh
        retry schedule."""
        outbox = self._authorised(request)
        delivery = await outbox.delivery(request.path_params["id"])
        if delivery is None:
            raise ApiError("no such delivery", status=404, code="not_found")
        subscription = await outbox.subscription(delivery.subscription_id)
        if subscription is None or not subscription.enabled:
            raise ApiError("the subscription is disabled; enable it first "
                           "(POST /v1/subscriptions/{id}/enable)", status=409,
                           code="subscription_disabled")
        retried = await outbox.retry_delivery(delivery.id, utcnow().timestamp())
        if retried is not Retried.RETRIED:
            status, code, message = _RETRY_REFUSED[retried]
            raise ApiError(message, status=status, code=code)
        self.outbound.wake(delivery.subscription_id)
        again = await outbox.delivery(delivery.id)
        assert again is not None
        return JSONResponse(delivery_json(again))

    def _authorised(self, request: Request) -> Outbox:
        self.access.require_key(request)
        return self.outbox

    async def _check_target(self, url: str) -> None:
        try:
            await self.outbound.guard.target(url)
        except TargetError as exc:
            code = "forbidden_target" if exc.address is not None else "unresolvable_target"
            raise ApiError(f"url: {exc}", status=422, code=code,
                           details={"field": "url", "address": exc.address}) from None


def delivery_json(delivery: Delivery) -> dict[str, Any]:
    pending = delivery.status is DeliveryStatus.PENDING
    return {
        "id": delivery.id,
        "subscription_id": delivery.subscription_id,
        "webhook_id": delivery.event.cursor,
        "job_id": delivery.job_id,
        "job_version": delivery.event.job.version,
        "status": delivery.status.value,
        "created_at": _iso(delivery.created_at),
        "next_attempt_at": _iso(delivery.next_at) if pending else None,
        "attempts": [attempt.to_dict() for attempt in delivery.attempts],
        "superseded_by": delivery.superseded_by,
        "reason": delivery.reason,
    }


def _iso(seconds: float) -> str:
    return isoformat(datetime.fromtimestamp(seconds, UTC))


async def _subscription(outbox: Outbox, request: Request) -> Subscription:
    subscription = await outbox.subscription(request.path_params["id"])
    if subscription is None:
        raise ApiError("no such subscription", status=404, code="not_found")
    return subscription


def _url(body: dict[str, Any]) -> str:
    url = body.get("url")
    if not isinstance(url, str):
        raise invalid("url", "required, an http:// or https:// URL")
    problem = url_problem(url)
    if problem is not None:
        raise invalid("url", problem)
    return url


def _events(body: dict[str, Any]) -> tuple[EventKind, ...] | None:
    value = body.get("events")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(word, str) for word in value):
        raise invalid("events", "expected a list of strings")
    problem = events_problem(value)
    if problem is not None:
        raise invalid("events", problem)
    return tuple(EventKind(word) for word in dict.fromkeys(value))


def _since(body: dict[str, Any]) -> float:
    value = body.get("since")
    problem = "required, an ISO 8601 time with its offset, e.g. 2026-01-02T03:04:05Z"
    if not isinstance(value, str) or len(value) > 64:
        raise invalid("since", problem)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise invalid("since", problem) from None
    if moment.tzinfo is None:
        raise invalid("since", problem)
    return moment.timestamp()


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise invalid(name, "expected true or false")
    return value


def _secret(body: dict[str, Any]) -> str:
    secret = body.get("secret")
    if secret is None:
        return new_secret()
    if not isinstance(secret, str) or signing_key(secret) is None:
        raise invalid("secret", "expected whsec_ and the base64 of 24 to 64 bytes")
    return secret


def _status(value: str | None) -> DeliveryStatus | None:
    if value is None:
        return None
    try:
        return DeliveryStatus(value)
    except ValueError:
        raise invalid("status", f"expected one of {', '.join(DeliveryStatus)}", 400) from None
