"""The relay's signed tokens: subscribe tokens (what a browser's EventSource may see),
session tokens (an API key exchanged for a short while, so the console never keeps the key)
and webhook URL tokens (the `{token}` of `/hooks/{provider}/{token}`).

Tokens are itsdangerous signatures made with the relay secret, one salt per purpose, so a
subscribe token can never pass as a webhook token or the other way round.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer

from relay.errors import TokenError
from relay.limits import TOKEN_TTL

VERIFIED_KEPT = 10_000
"""Webhook tokens remembered as verified (the memory is cleared when it is full)."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a subscribe token lets its bearer see. `everything` is an API key's grant."""

    jobs: frozenset[str] = frozenset()
    topics: frozenset[str] = frozenset()
    everything: bool = False

    def allows_job(self, job_id: str, topics: Collection[str]) -> bool:
        return self.everything or job_id in self.jobs or not self.topics.isdisjoint(topics)

    def allows_topic(self, topic: str) -> bool:
        return self.everything or topic in self.topics


FULL_ACCESS = Grant(everything=True)


class Tokens:
    """Signs and reads the relay's tokens.

    The secret may only be known at startup (on loopback it is generated once and kept in
    the store), so it is given by `use_secret` rather than at construction.
    """

    def __init__(self, secret: str | None = None) -> None:
        if secret is not None:
            self.use_secret(secret)

    def use_secret(self, secret: str) -> None:
        self._subscribe = URLSafeSerializer(secret, salt="relay.subscribe")
        self._webhook = URLSafeSerializer(secret, salt="relay.webhook")
        self._session = URLSafeSerializer(secret, salt="relay.session")
        self._verified: dict[str, tuple[str, str]] = {}

    def subscribe_token(self, jobs: Sequence[str] = (), topics: Sequence[str] = (),
                        ttl: int = TOKEN_TTL, now: float | None = None) -> tuple[str, int]:
        """A token granting `jobs` and `topics` for `ttl` seconds, and when it expires."""
        expires = int((time.time() if now is None else now) + ttl)
        token = self._subscribe.dumps({"j": list(jobs), "t": list(topics), "e": expires})
        return str(token), expires

    def read_subscribe_token(self, token: str, now: float | None = None) -> Grant:
        """The grant of a token; TokenError when it is altered or expired."""
        try:
            data = self._subscribe.loads(token)
        except BadSignature:
            raise TokenError("invalid_token", "the token is invalid") from None
        if not isinstance(data, dict) or data.get("e", 0) < (time.time() if now is None else now):
            raise TokenError("token_expired", "the token has expired")
        return Grant(jobs=frozenset(data.get("j", ())), topics=frozenset(data.get("t", ())))

    def session_token(self, key_id: str, ttl: int, now: float | None = None) -> tuple[str, int]:
        """A token that stands in for the API key `key_id` names (`key_fingerprint`) for
        `ttl` seconds, and when it expires."""
        expires = int((time.time() if now is None else now) + ttl)
        return str(self._session.dumps({"k": key_id, "e": expires})), expires

    def session_key(self, token: str, now: float | None = None) -> str | None:
        """The key fingerprint a live session token was made for; None for any other string."""
        try:
            data = self._session.loads(token)
        except BadSignature:
            return None
        if not isinstance(data, dict):
            return None
        key_id, expires = data.get("k"), data.get("e")
        if not isinstance(key_id, str) or not isinstance(expires, int):
            return None
        return key_id if expires >= (time.time() if now is None else now) else None

    def webhook_token(self, provider: str, external_id: str) -> str:
        """The path segment that proves a delivery to `/hooks/{provider}/{token}` for one job:
        the provider's job `external_id`, and no other."""
        return str(self._webhook.dumps([provider, external_id]))

    def webhook_job(self, token: str) -> tuple[str, str] | None:
        """The (provider, external id) a webhook token was made for; None for a token the
        relay did not sign (or one from before tokens named their job). Tokens verified once
        are remembered, so a provider's many deliveries cost one signature check."""
        known = self._verified.get(token)
        if known is not None:
            return known
        try:
            data = self._webhook.loads(token)
        except BadSignature:
            return None
        if not (isinstance(data, list) and len(data) == 2
                and all(isinstance(part, str) for part in data)):
            return None
        if len(self._verified) >= VERIFIED_KEPT:
            self._verified.clear()
        self._verified[token] = job = (data[0], data[1])
        return job


def key_fingerprint(key: str) -> str:
    """What a session token records of its API key: enough to tell whether the key is still
    configured, nothing that gives the key away."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]
