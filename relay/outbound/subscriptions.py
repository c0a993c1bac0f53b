"""The `[[subscriptions]]` of the configuration, as subscriptions the outbox keeps."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from relay.config import OutboundConfig, SubscriptionConfig
from relay.errors import ConfigError, TargetError
from relay.limits import TOPICS_PER_SUBSCRIPTION, topics_problem
from relay.models import isoformat, utcnow
from relay.outbound.targets import Guard, url_problem
from relay.signing import signing_key
from relay.store.outbox import Subscription


def config_subscriptions(config: OutboundConfig) -> list[Subscription]:
    """The `[[subscriptions]]` entries, each with an id derived from its url and topics (so
    registering them again at every start finds the same ones); ConfigError names the key."""
    guard = Guard(config.allow_private_targets)
    seen: dict[str, int] = {}
    found = []
    for index, entry in enumerate(config.subscriptions):
        subscription = _config_subscription(f"subscriptions[{index}]", entry, guard)
        if subscription.id in seen:
            raise ConfigError(f"subscriptions[{index}]: the same url and topics as "
                              f"subscriptions[{seen[subscription.id]}]")
        seen[subscription.id] = index
        found.append(subscription)
    return found


def _config_subscription(key: str, entry: SubscriptionConfig, guard: Guard) -> Subscription:
    problem = url_problem(entry.url)
    if problem is not None:
        raise ConfigError(f"{key}.url: {problem}")
    try:
        guard.check_now(entry.url)
    except TargetError as exc:
        raise ConfigError(f"{key}.url: {exc}") from None
    problem = topics_problem(entry.topics, TOPICS_PER_SUBSCRIPTION, least=1)
    if problem is not None:
        raise ConfigError(f"{key}.topics: {problem}")
    if entry.secret is None or signing_key(entry.secret) is None:
        raise ConfigError(f"{key}.secret: required, whsec_ and the base64 of 24 to 64 bytes")
    return Subscription(config_id(entry.url, entry.topics), entry.url, tuple(entry.topics),
                        entry.secret, origin="config", created_at=isoformat(utcnow()))


def config_id(url: str, topics: Sequence[str]) -> str:
    digest = hashlib.sha256(json.dumps([url, sorted(topics)]).encode()).hexdigest()
    return f"sub_cfg_{digest[:24]}"
