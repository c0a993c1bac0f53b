"""The relay's signed tokens: subscribe tokens (what a browser's EventSource may see) and
webhook URL tokens (the `{token}` of `/hooks/{provider}/{token}`).

Tokens are itsdangerous signatures made with the relay secret, one salt per purpose, so a
subscribe token can never pass as a webhook token or the other way round.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer

from relay.errors import TokenError
from relay.limits import TOKEN_TTL


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

    def webhook_token(self, provider: str) -> str:
        """The path segment that proves a delivery to `/hooks/{provider}/{token}`."""
        return str(self._webhook.dumps(provider))

    def webhook_token_allows(self, token: str, provider: str) -> bool:
        try:
            return bool(self._webhook.loads(token) == provider)
        except BadSignature:
            return False
