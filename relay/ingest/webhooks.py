"""Webhook ingest: proving a provider's delivery genuine, then recording what it says.

The HTTP layer (relay.http.hooks) reads the body under its cap and calls, in this order:
`provider(name)`, `authenticate(...)` over the raw bytes, then (once the bytes are proven and
parsed) `accept(...)`, which normalises and stores. Only a committed update is accepted; nothing
from a refused delivery is stored. Every outcome, and every reason a delivery was refused, is
counted per provider (`relay_webhooks_total`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import Counter

from relay.config import ProviderConfig, Providers
from relay.errors import Refusal, Refused, Unverified
from relay.ingest.recorder import Recorder
from relay.limits import MESSAGE_ID_LENGTH, TEXT_LENGTH
from relay.models import Schema, Source, utcnow
from relay.normalise import read_update
from relay.runtime.metrics import Metrics
from relay.signing import verify
from relay.store import Applied
from relay.tokens import Tokens

logger = logging.getLogger(__name__)

ID_FIELDS = {Schema.STORY: "job_id", Schema.GENERATION: "id", Schema.JOBSTATUS: "id"}


class WebhookIngest:
    """`on_unverified(provider, external_id)` is told of each delivery that failed
    verification but names a job, so the poll scheduler can check that job at the provider."""

    def __init__(self, providers: Providers, recorder: Recorder, tokens: Tokens,
                 metrics: Metrics,
                 on_unverified: Callable[[str, str], None] | None = None) -> None:
        self.providers = providers
        self.recorder = recorder
        self.tokens = tokens
        self.metrics = metrics
        self.on_unverified = on_unverified
        self._counters: dict[tuple[str, str], Counter] = {}

    def provider(self, name: str) -> ProviderConfig:
        provider = self.providers.get(name)
        if provider is None:
            raise Refused(Refusal.MISSING, "unknown_provider",
                          f"no provider named {name[:64]!r} is configured")
        return provider

    def authenticate(self, provider: ProviderConfig, token: str | None,
                     headers: Mapping[str, str], body: bytes) -> None:
        """Nothing for a genuine delivery; `Unverified` for one that proves nothing."""
        try:
            self._prove(provider, token, headers, body)
        except Unverified:
            self._tell_unverified(provider, body)
            raise

    async def accept(self, provider: ProviderConfig, payload: Any,
                     headers: Mapping[str, str]) -> Applied:
        """Normalise and store a proven delivery; `applied.event` is None for a repeat."""
        update = read_update(provider.schema, payload, utcnow())
        applied = await self.recorder.record(
            provider, update, Source.WEBHOOK,
            dedupe_key=_dedupe_key(provider, update.external_id, headers))
        self.count(provider, "accepted" if applied.event is not None else "duplicate")
        return applied

    def count(self, provider: ProviderConfig, outcome: str) -> None:
        # The labelled child is looked up once per (provider, outcome): both sets are small.
        counter = self._counters.get((provider.name, outcome))
        if counter is None:
            counter = self.metrics.webhooks.labels(provider.name, outcome)
            self._counters[(provider.name, outcome)] = counter
        counter.inc()

    def _prove(self, provider: ProviderConfig, token: str | None,
               headers: Mapping[str, str], body: bytes) -> None:
        if token is not None and not self.tokens.webhook_token_allows(token, provider.name):
            _refuse(provider, "bad_token")
        if provider.webhook_secrets:
            reason = verify(headers, body, provider.webhook_secrets, now=time.time(),
                            tolerance=provider.signature_tolerance)
            if reason is not None:
                _refuse(provider, reason)
        elif token is None:
            _refuse(provider, "missing_token")

    def _tell_unverified(self, provider: ProviderConfig, body: bytes) -> None:
        # Best effort, on a body that proved nothing: whatever the hook does with it, the
        # sender is answered 401, never 500.
        if self.on_unverified is None:
            return
        external_id = named_job(provider.schema, body)
        if external_id is None:
            return
        try:
            self.on_unverified(provider.name, external_id)
        except Exception:
            logger.exception("the unverified-delivery hook failed for %s", provider.name)


def _refuse(provider: ProviderConfig, reason: str) -> None:
    logger.warning("refused a webhook for %s: %s", provider.name, reason)
    raise Unverified(reason)


def named_job(schema: Schema, body: bytes) -> str | None:
    """The job id a webhook body names, if it parses (best effort: it proved nothing)."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
        return None
    value = payload.get(ID_FIELDS[schema]) if isinstance(payload, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= TEXT_LENGTH else None


def _dedupe_key(provider: ProviderConfig, external_id: str,
                headers: Mapping[str, str]) -> str | None:
    """A redelivered message (same `webhook-id`, same job) is a duplicate. The job is part of
    the key so that a sender reusing ids across jobs never loses an update."""
    message_id = headers.get("webhook-id")
    if not message_id:
        return None
    return f"{provider.name}:{external_id}:{message_id[:MESSAGE_ID_LENGTH]}"
