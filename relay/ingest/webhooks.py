"""`POST /hooks/{provider}` and `POST /hooks/{provider}/{token}`: the webhookUrl target.

The order matters: find the provider, check the content type, read the body under its cap,
prove the delivery (signature or token) over the raw bytes, then parse, normalise and store.
Only a committed update is answered 202; nothing from a refused request is stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from relay.auth import Tokens
from relay.errors import ApiError, StoreError
from relay.ingest.recorder import Recorder
from relay.ingest.signatures import verify
from relay.metrics import Metrics
from relay.models import Source, utcnow
from relay.normalise import read_update
from relay.settings import ProviderSettings, Settings
from relay.web import parse_json, read_body

logger = logging.getLogger(__name__)

_JSON_TYPES = ("application/json", "text/json")
MAX_MESSAGE_ID = 256


class WebhookReceiver:
    def __init__(self, settings: Settings, recorder: Recorder, tokens: Tokens,
                 metrics: Metrics,
                 on_unverified: Callable[[str, bytes], None] | None = None) -> None:
        self.settings = settings
        self.recorder = recorder
        self.tokens = tokens
        self.metrics = metrics
        # Told (provider name, raw body) of each delivery that failed verification, so the
        # poll scheduler can check the job it names at the provider.
        self.on_unverified = on_unverified
        self._counters: dict[tuple[str, str], Counter] = {}

    async def receive(self, request: Request) -> Response:
        provider = self._provider(request.path_params["provider"])
        try:
            return await self._receive(request, provider)
        except ApiError as exc:
            self._count(provider, getattr(exc, "reason", exc.code))
            raise
        except StoreError:
            self._count(provider, "store_unavailable")
            raise

    async def _receive(self, request: Request, provider: ProviderSettings) -> Response:
        _check_content_type(request.headers.get("content-type", ""))
        body = await read_body(request, self.settings.server.max_body)
        try:
            self._authenticate(provider, request.path_params.get("token"), request.headers, body)
        except Unverified:
            self._tell_unverified(provider, body)
            raise
        update = read_update(provider.schema, parse_json(body), utcnow())
        applied = await self.recorder.record(
            provider, update, Source.WEBHOOK,
            dedupe_key=_dedupe_key(provider, update.external_id, request.headers))
        job_id = applied.job.id if applied.job is not None else None
        if applied.event is None:
            self._count(provider, "duplicate")
            return JSONResponse({"accepted": True, "duplicate": True, "job_id": job_id})
        self._count(provider, "accepted")
        return JSONResponse({"accepted": True, "job_id": job_id,
                             "cursor": applied.event.cursor}, status_code=202)

    def _tell_unverified(self, provider: ProviderSettings, body: bytes) -> None:
        # Best effort, on a body that proved nothing: whatever the hook does with it, the
        # sender is answered 401, never 500.
        if self.on_unverified is None:
            return
        try:
            self.on_unverified(provider.name, body)
        except Exception:
            logger.exception("the unverified-delivery hook failed for %s", provider.name)

    def _count(self, provider: ProviderSettings, outcome: str) -> None:
        # The labelled child is looked up once per (provider, outcome): both sets are small.
        counter = self._counters.get((provider.name, outcome))
        if counter is None:
            counter = self.metrics.webhooks.labels(provider.name, outcome)
            self._counters[(provider.name, outcome)] = counter
        counter.inc()

    def _provider(self, name: str) -> ProviderSettings:
        provider = self.settings.providers.get(name)
        if provider is None:
            raise ApiError(f"no provider named {name[:64]!r} is configured", status=404,
                           code="unknown_provider")
        return provider

    def _authenticate(self, provider: ProviderSettings, token: str | None,
                      headers: Mapping[str, str], body: bytes) -> None:
        if token is not None and not self.tokens.webhook_token_allows(token, provider.name):
            self._refuse(provider, "bad_token")
        if provider.webhook_secrets:
            reason = verify(headers, body, provider.webhook_secrets, now=time.time(),
                            tolerance=provider.signature_tolerance)
            if reason is not None:
                self._refuse(provider, reason)
        elif token is None:
            self._refuse(provider, "missing_token")

    def _refuse(self, provider: ProviderSettings, reason: str) -> None:
        logger.warning("refused a webhook for %s: %s", provider.name, reason)
        raise Unverified(reason)


class Unverified(ApiError):
    """A delivery that proved nothing. The sender learns only `invalid_signature`; the
    reason is for the operator's log and metrics."""

    status = 401
    code = "invalid_signature"

    def __init__(self, reason: str) -> None:
        super().__init__("the delivery could not be verified")
        self.reason = reason


def _dedupe_key(provider: ProviderSettings, external_id: str,
                headers: Mapping[str, str]) -> str | None:
    """A redelivered message (same `webhook-id`, same job) is a duplicate. The job is part of
    the key so that a sender reusing ids across jobs never loses an update."""
    message_id = headers.get("webhook-id")
    if not message_id:
        return None
    return f"{provider.name}:{external_id}:{message_id[:MAX_MESSAGE_ID]}"


def _check_content_type(header: str) -> None:
    media_type = header.split(";", 1)[0].strip().lower()
    if media_type and media_type not in _JSON_TYPES and not media_type.endswith("+json"):
        raise ApiError(f"expected application/json, got {media_type[:64]!r}", status=415,
                       code="unsupported_media_type")
