"""The `[[subscriptions]]` of the configuration, as subscriptions the outbox keeps.

Each has an id that is the same at every start and on every instance with the same entry:
`sub_cfg-<name>` when the entry has a `name` (so its url, topics, events and secret may change
and it stays the same subscription, with its deliveries and health), else `sub_cfg_<hash>` of
its url, topics and events (a change of those is another subscription; a new secret is not).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence

from relay.config import OutboundConfig, SubscriptionConfig
from relay.errors import ConfigError, TargetError
from relay.limits import TOPICS_PER_SUBSCRIPTION, topics_problem
from relay.models import isoformat, utcnow
from relay.outbound.targets import Guard, url_problem
from relay.signing import signing_key
from relay.store.outbox import EventKind, Health, Subscription, events_problem

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def config_subscriptions(config: OutboundConfig) -> list[Subscription]:
    """The `[[subscriptions]]` entries with their ids; ConfigError names the key."""
    guard = Guard(config.allow_private_targets)
    seen: dict[str, int] = {}
    found = []
    for index, entry in enumerate(config.subscriptions):
        subscription = _config_subscription(f"subscriptions[{index}]", entry, guard)
        if subscription.id in seen:
            same = "name" if entry.name is not None else "url, topics and events"
            raise ConfigError(f"subscriptions[{index}]: the same {same} as "
                              f"subscriptions[{seen[subscription.id]}]")
        seen[subscription.id] = index
        found.append(subscription)
    return found


def _config_subscription(key: str, entry: SubscriptionConfig, guard: Guard) -> Subscription:
    _check_url(key, entry.url, guard)
    problem = topics_problem(entry.topics, TOPICS_PER_SUBSCRIPTION, least=1)
    if problem is not None:
        raise ConfigError(f"{key}.topics: {problem}")
    if entry.secret is None or signing_key(entry.secret) is None:
        raise ConfigError(f"{key}.secret: required, whsec_ and the base64 of 24 to 64 bytes")
    events = _events(key, entry.events)
    if entry.name is not None and not _NAME.fullmatch(entry.name):
        raise ConfigError(f"{key}.name: 1 to 64 letters, digits, '-' or '_'")
    subscription_id = (f"sub_cfg-{entry.name}" if entry.name is not None
                       else config_id(entry.url, entry.topics, events))
    now = utcnow()
    return Subscription(subscription_id, entry.url, tuple(entry.topics), entry.secret,
                        origin="config", created_at=isoformat(now), events=events,
                        name=entry.name, health=Health(since=now.timestamp()))


def _check_url(key: str, url: str, guard: Guard) -> None:
    problem = url_problem(url)
    if problem is not None:
        raise ConfigError(f"{key}.url: {problem}")
    try:
        guard.check_now(url)
    except TargetError as exc:
        raise ConfigError(f"{key}.url: {exc}") from None


def _events(key: str, words: Sequence[str] | None) -> tuple[EventKind, ...] | None:
    if words is None:
        return None
    problem = events_problem(words)
    if problem is not None:
        raise ConfigError(f"{key}.events: {problem}")
    return tuple(EventKind(word) for word in dict.fromkeys(words))


def config_id(url: str, topics: Sequence[str], events: Sequence[str] | None = None) -> str:
    """The id of an unnamed entry. One without `events` hashes as it did before they
    existed, so its id (and its deliveries) survive the upgrade."""
    content: list[object] = [url, sorted(topics)]
    if events is not None:
        content.append(sorted(events))
    digest = hashlib.sha256(json.dumps(content).encode()).hexdigest()
    return f"sub_cfg_{digest[:24]}"
