"""`POST /hooks/{provider}` and `POST /hooks/{provider}/{token}`: the webhookUrl target.

The order matters: find the provider, check the content type, read the body under its cap,
prove the delivery (signature or token) over the raw bytes, then parse, normalise and store.
Only a committed update is answered 202; nothing from a refused request is stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from relay.auth import Tokens
from relay.errors import ApiError
from relay.ingest.recorder import Recorder
from relay.ingest.signatures import verify
from relay.metrics import Metrics
from relay.models import Source, utcnow
from relay.normalise import read_update
from relay.settings import ProviderSettings, Settings
from relay.web import parse_json, read_body

logger = logging.getLogger(__name__)

_JSON_TYPES = ("application/json", "text/json")


class WebhookReceiver:
    def __init__(self, settings: Settings, recorder: Recorder, tokens: Tokens,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.recorder = recorder
        self.tokens = tokens
        self.metrics = metrics

    async def receive(self, request: Request) -> Response:
        provider = self._provider(request.path_params["provider"])
        try:
            return await self._receive(request, provider)
        except ApiError as exc:
            self.metrics.webhooks.labels(provider.name, getattr(exc, "reason", exc.code)).inc()
            raise

    async def _receive(self, request: Request, provider: ProviderSettings) -> Response:
        _check_content_type(request.headers.get("content-type", ""))
        body = await read_body(request, self.settings.server.max_body)
        self._authenticate(provider, request.path_params.get("token"), request.headers, body)
        update = read_update(provider.schema, parse_json(body), utcnow())
        dedupe = request.headers.get("webhook-id")
        applied = await self.recorder.record(
            provider, update, Source.WEBHOOK,
            dedupe_key=f"{provider.name}:{dedupe[:256]}" if dedupe else None)
        assert applied.job is not None
        if applied.event is None:
            self.metrics.webhooks.labels(provider.name, "duplicate").inc()
            return JSONResponse({"accepted": True, "duplicate": True, "job_id": applied.job.id})
        self.metrics.webhooks.labels(provider.name, "accepted").inc()
        return JSONResponse({"accepted": True, "job_id": applied.job.id,
                             "cursor": applied.event.cursor}, status_code=202)

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


def _check_content_type(header: str) -> None:
    media_type = header.split(";", 1)[0].strip().lower()
    if media_type and media_type not in _JSON_TYPES and not media_type.endswith("+json"):
        raise ApiError(f"expected application/json, got {media_type[:64]!r}", status=415,
                       code="unsupported_media_type")
