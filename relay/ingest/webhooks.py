"""Webhook ingest: proving a provider's delivery genuine, then recording what it says.

The HTTP layer (relay.http.hooks) calls, in this order, and stops at the first refusal:

    provider(name)                          404 for a provider not configured
    admit(provider, token, headers)         before the body is read: the path token (a job's
                                            own, checked once and remembered), and a
                                            signature header with a timestamp in tolerance;
                                            a request that can prove nothing costs no more
                                            than its headers
    authenticate(provider, admitted, body)  the signature, over the raw bytes; the key a
                                            replay of this delivery would carry
    accept(provider, payload, ...)          normalise, check the token's job, store

Only a committed update is accepted; nothing from a refused delivery is stored. A delivery
seen before (the same signature, or the same Standard Webhooks `webhook-id` for the job,
within 7 days: the store keeps the key) is a duplicate and makes no event, even when the job
has changed since. Every outcome, and every reason a delivery was refused, is counted per
provider (`relay_webhooks_total`). A refusal is also a warning, at most one per provider and
reason every WARN_EVERY seconds, saying how many went unsaid: a flood of forged or
misaddressed deliveries has its access lines and its count, not a second line each.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from prometheus_client import Counter

from relay.config import ProviderConfig, Providers
from relay.errors import Refusal, Refused, Unverified
from relay.ingest.catalogs import Catalogs
from relay.ingest.recorder import Recorder
from relay.limits import MESSAGE_ID_LENGTH, TEXT_LENGTH
from relay.models import Schema, Source, now
from relay.normalise import read_update
from relay.runtime.metrics import Metrics
from relay.signing import STANDARD, Claim, claim, prove
from relay.store import Applied
from relay.tokens import Tokens

logger = logging.getLogger(__name__)

ID_FIELDS = {Schema.STORY: "job_id", Schema.GENERATION: "id", Schema.JOBSTATUS: "id"}
WARN_EVERY = 60.0
"""Seconds between warnings of refused deliveries for one provider and reason."""
NAMED_JOB_SCAN = 4096
"""Bytes of a refused body searched for the job it names (never parsed: it proved nothing)."""

Job = tuple[str, str]
"""A job as a provider knows it: (provider name, external id)."""


@dataclass(frozen=True, slots=True)
class Admitted:
    """What a delivery's headers showed: the job its path token is for, and the signature
    headers it claims to be proven by (None: the provider has no secret)."""

    job: Job | None
    claim: Claim | None


class WebhookIngest:
    """`on_unverified(provider, external_id)` is told of each delivery that failed
    verification but names a job, so the poll scheduler can check that job at the provider."""

    def __init__(self, providers: Providers, recorder: Recorder, tokens: Tokens,
                 metrics: Metrics, *, catalogs: Catalogs | None = None,
                 on_unverified: Callable[[str, str], None] | None = None) -> None:
        self.providers = providers
        self.recorder = recorder
        self.tokens = tokens
        self.metrics = metrics
        self.catalogs = catalogs  # the generation providers' error catalogs
        self.on_unverified = on_unverified
        self._counters: dict[tuple[str, str], Counter] = {}
        self._warned: dict[tuple[str, str], tuple[float, int]] = {}  # when, refusals since

    def provider(self, name: str) -> ProviderConfig:
        provider = self.providers.get(name)
        if provider is None:
            raise Refused(Refusal.MISSING, "unknown_provider",
                          f"no provider named {name[:64]!r} is configured")
        return provider

    def admit(self, provider: ProviderConfig, token: str | None,
              headers: Mapping[str, str]) -> Admitted:
        """What the headers claim; `Unverified` for a request that cannot prove itself,
        whatever its body: a bad token, or no token and no usable signature."""
        job = None
        if token is not None:
            job = self.tokens.webhook_job(token)
            if job is None or job[0] != provider.name:
                self._refuse(provider, "bad_token")
        claimed = None
        if provider.webhook_secrets:
            claimed = claim(headers, now=time.time(), tolerance=provider.signature_tolerance)
            if claimed.problem is not None:
                self._refuse(provider, claimed.problem)
        elif token is None:
            self._refuse(provider, "missing_token")
        return Admitted(job, claimed)

    def authenticate(self, provider: ProviderConfig, admitted: Admitted,
                     body: bytes) -> str | None:
        """The key a replay of this delivery would carry again (None when only a token
        proves it); `Unverified` when its signature does not prove `body`."""
        if admitted.claim is None:
            return None
        proof = prove(admitted.claim, body, provider.webhook_secrets)
        if proof.problem is not None:
            self._tell_unverified(provider, body)
            self._refuse(provider, proof.problem)
        if admitted.claim.scheme == STANDARD:
            return None  # its webhook-id, signed with the body, is the key (see accept)
        # A Sync-Signature's key starts with its signed time ("<t>."; an X-Signature-Primary
        # has none), so each new key lands beside the last ones in the store's index rather
        # than on a page of its own (of a SQLite commit's pages, this was half).
        prefix = admitted.claim.signed_prefix.decode()
        return f"sig:{provider.name}:{prefix}{proof.signature.hex()}"

    async def accept(self, provider: ProviderConfig, payload: Any, headers: Mapping[str, str],
                     *, job: Job | None = None, replay_key: str | None = None) -> Applied:
        """Normalise and store a proven delivery; `applied.event` is None for a repeat. A
        delivery through a job's token must be about that job."""
        catalog = self.catalogs.get(provider.name) if self.catalogs is not None else None
        update = read_update(provider.schema, payload, now(), catalog=catalog)
        if job is not None and job[1] != update.external_id:
            self._refuse(provider, "token_for_another_job")
        key = replay_key or _message_key(provider, update.external_id, headers)
        applied = await self.recorder.record(provider, update, Source.WEBHOOK, dedupe_key=key)
        self.count(provider, "accepted" if applied.event is not None else "duplicate")
        return applied

    def count(self, provider: ProviderConfig, outcome: str) -> None:
        # The labelled child is looked up once per (provider, outcome): both sets are small.
        counter = self._counters.get((provider.name, outcome))
        if counter is None:
            counter = self.metrics.webhooks.labels(provider.name, outcome)
            self._counters[(provider.name, outcome)] = counter
        counter.inc()

    def _refuse(self, provider: ProviderConfig, reason: str) -> NoReturn:
        key, now = (provider.name, reason), time.monotonic()
        warned, unsaid = self._warned.get(key, (now - WARN_EVERY, 0))
        if now - warned < WARN_EVERY:
            self._warned[key] = (warned, unsaid + 1)
        else:
            self._warned[key] = (now, 0)
            logger.warning("refused a webhook for %s: %s%s", provider.name, reason,
                           f" (and {unsaid} more since the last warning)" if unsaid else "")
        raise Unverified(reason)

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


_NAMED = {field: re.compile(rb'"%s"\s*:\s*"([^"\\]{1,%d})"' % (field.encode(), TEXT_LENGTH))
          for field in set(ID_FIELDS.values())}


def named_job(schema: Schema, body: bytes) -> str | None:
    """The job id a webhook body names, found without parsing it: the body proved nothing,
    so it may be any size and shape, and only its start is searched."""
    found = _NAMED[ID_FIELDS[schema]].search(body, 0, NAMED_JOB_SCAN)
    if found is None:
        return None
    try:
        return found.group(1).decode()
    except UnicodeDecodeError:
        return None


def _message_key(provider: ProviderConfig, external_id: str,
                 headers: Mapping[str, str]) -> str | None:
    """A redelivered message (same `webhook-id`, same job) is a duplicate. The job is part of
    the key so that a sender reusing ids across jobs never loses an update."""
    message_id = headers.get("webhook-id")
    if not message_id:
        return None
    return f"{provider.name}:{external_id}:{message_id[:MESSAGE_ID_LENGTH]}"
