"""The subscriptions API (CONTRACT section 6): outbound webhook subscriptions and what became
of their deliveries.

    POST   /v1/subscriptions                  {"url", "topics"?, "secret"?}: 201, secret shown once
    GET    /v1/subscriptions                  every subscription (never a secret)
    GET    /v1/subscriptions/{id}             one
    DELETE /v1/subscriptions/{id}             204 (409 for one the config defines)
    GET    /v1/subscriptions/{id}/deliveries  ?status=&limit=, newest first, with attempts
    POST   /v1/deliveries/{id}/retry          a failed delivery, pending again
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from relay.auth import Access
from relay.errors import ApiError, TargetError
from relay.fanout.outbound import Outbound, topics_problem
from relay.fanout.sending import new_secret, signing_key
from relay.fanout.targets import url_problem
from relay.models import isoformat, utcnow
from relay.store import Store
from relay.store.outbox import Delivery, DeliveryStatus, Outbox, Retried, Subscription
from relay.web import json_object, read_json

DEFAULT_LIMIT = 100
MAX_LIMIT = 500

_RETRY_REFUSED = {
    Retried.MISSING: (404, "not_found", "no such delivery"),
    Retried.NOT_FAILED: (409, "not_failed", "only a failed delivery can be retried"),
    Retried.NEWER: (409, "superseded", "a newer update of this job was delivered or is on its "
                    "way; sending this one again would take the job back in time"),
}


class SubscriptionsApi:
    def __init__(self, store: Store, access: Access, outbound: Outbound) -> None:
        self.outbox = store if isinstance(store, Outbox) else None
        self.access = access
        self.outbound = outbound

    async def create(self, request: Request) -> Response:
        """`POST /v1/subscriptions`: the answer is the only one that shows the secret."""
        outbox = self._authorised(request)
        body = json_object(await read_json(request))
        url, topics = _url(body), _topics(body)
        secret = _secret(body)
        await self._check_target(url)
        subscription = Subscription(f"sub_{secrets.token_hex(12)}", url, tuple(topics), secret,
                                    created_at=isoformat(utcnow()))
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
        if subscription.origin == "config":
            raise ApiError("this subscription is defined in the configuration; remove it there",
                           status=409, code="config_subscription")
        await outbox.delete_subscription(subscription.id)
        self.outbound.changed()
        return Response(status_code=204)

    async def deliveries(self, request: Request) -> Response:
        """`GET /v1/subscriptions/{id}/deliveries?status=&limit=`: newest first."""
        outbox = self._authorised(request)
        subscription = await _subscription(outbox, request)
        params = request.query_params
        found = await outbox.deliveries(subscription.id, _limit(params.get("limit")),
                                        _status(params.get("status")))
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
            raise ApiError("the subscription is disabled; create it again to deliver to it",
                           status=409, code="subscription_disabled")
        retried = await outbox.retry_delivery(delivery.id, utcnow().timestamp())
        if retried is not Retried.RETRIED:
            status, code, message = _RETRY_REFUSED[retried]
            raise ApiError(message, status=status, code=code)
        self.outbound.wake(delivery.subscription_id)
        again = await outbox.delivery(delivery.id)
        assert again is not None
        return JSONResponse(delivery_json(again))

    def _authorised(self, request: Request) -> Outbox:
        self.access.require_key(request.headers.get("authorization"))
        if self.outbox is None:
            raise ApiError("this store cannot keep subscriptions", status=409,
                           code="not_supported")
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


def _invalid(field: str, problem: str) -> ApiError:
    return ApiError(f"{field}: {problem}", status=422, code="invalid_request",
                    details={"field": field})


def _url(body: dict[str, Any]) -> str:
    url = body.get("url")
    if not isinstance(url, str):
        raise _invalid("url", "required, an http:// or https:// URL")
    problem = url_problem(url)
    if problem is not None:
        raise _invalid("url", problem)
    return url


def _topics(body: dict[str, Any]) -> list[str]:
    topics = body.get("topics", ["*"])
    if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
        raise _invalid("topics", "expected a list of strings (\"*\" for every job)")
    problem = topics_problem(topics)
    if problem is not None:
        raise _invalid("topics", problem)
    return list(dict.fromkeys(topics))


def _secret(body: dict[str, Any]) -> str:
    secret = body.get("secret")
    if secret is None:
        return new_secret()
    if not isinstance(secret, str) or signing_key(secret) is None:
        raise _invalid("secret", "expected whsec_ and the base64 of 24 to 64 bytes")
    return secret


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise ApiError(f"limit: expected a whole number from 1 to {MAX_LIMIT}",
                       code="invalid_request", details={"field": "limit"})
    return int(value)


def _status(value: str | None) -> DeliveryStatus | None:
    if value is None:
        return None
    try:
        return DeliveryStatus(value)
    except ValueError:
        raise ApiError(f"status: expected one of {', '.join(DeliveryStatus)}",
                       code="invalid_request", details={"field": "status"}) from None
