"""Every limit on what a client may ask for, defined once: the HTTP layer enforces them,
the OpenAPI description states them, and the configuration checks its subscriptions by them.

This module imports nothing from relay.
"""

from __future__ import annotations

from collections.abc import Sequence

TEXT_LENGTH = 256
"""Characters in a provider name, an external id, a topic."""
TOPICS_PER_JOB = 50
"""Topics given to `POST /v1/jobs` (besides the relay's own `job:` and `provider:`)."""
TOPICS_PER_TOKEN = 100
"""Jobs, and topics, a subscribe token grants; topics and jobs one stream follows."""
TOPICS_PER_SUBSCRIPTION = 100
"""Topics of an outbound subscription."""
RESERVED_TOPICS = ("job:", "provider:")
"""Topic prefixes only the relay gives."""
METADATA_BYTES = 16384
"""`metadata` of `POST /v1/jobs`, as JSON."""
API_BODY_BYTES = 65536
"""The body of an API request (webhooks have `server.max_body`)."""
TOKEN_TTL = 3600
TOKEN_TTL_MAX = 30 * 86400
"""Seconds a subscribe token from `POST /v1/tokens` lives: by default, and at most."""
SESSION_TTL = 900
"""Seconds a session token (`POST /v1/sessions`) stands in for its API key."""
TRACKED_TOKEN_TTL = 86400
"""Seconds the subscribe token in `POST /v1/jobs`'s answer lives."""
WAIT_DEFAULT = 30.0
WAIT_MAX = 55.0
"""Seconds `GET /v1/jobs/{id}?wait=true` holds a request: by default, and at most."""
JOBS_PAGE_DEFAULT = 50
JOBS_PAGE_MAX = 200
OFFSET_MAX = 10**9
DELIVERIES_PAGE_DEFAULT = 100
DELIVERIES_PAGE_MAX = 500
URL_LENGTH = 2048
"""Characters in an outbound webhook URL."""
MESSAGE_ID_LENGTH = 256
"""Characters of a `webhook-id` kept to recognise a redelivery."""


def topics_problem(topics: Sequence[str], most: int, *, least: int = 0) -> str | None:
    """What is wrong with a list of topics (None: nothing): how many, how long."""
    if not least <= len(topics) <= most:
        return f"expected {least} to {most} topics"
    if not all(0 < len(topic) <= TEXT_LENGTH for topic in topics):
        return f"a topic is 1 to {TEXT_LENGTH} characters"
    return None
