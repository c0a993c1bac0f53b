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
RESERVED_TOPICS = ("job:", "provider:", "relay:")
"""Topic prefixes only the relay gives (`relay:ops` carries its operational events)."""
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
_PORT = "6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}"
_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(\.{_OCTET}){{3}}"
_H16, _LS32 = "[0-9A-Fa-f]{1,4}", f"([0-9A-Fa-f]{{1,4}}:[0-9A-Fa-f]{{1,4}}|{_IPV4})"
_IPV6 = "|".join([  # RFC 3986's IPv6address, one line per place the "::" may stand
    f"({_H16}:){{6}}{_LS32}", f"::({_H16}:){{5}}{_LS32}", f"({_H16})?::({_H16}:){{4}}{_LS32}",
    *(f"(({_H16}:){{0,{n}}}{_H16})?::({_H16}:){{{3 - n}}}{_LS32}" for n in (1, 2)),
    f"(({_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}", f"(({_H16}:){{0,4}}{_H16})?::{_LS32}",
    f"(({_H16}:){{0,5}}{_H16})?::{_H16}", f"(({_H16}:){{0,6}}{_H16})?::"])
URL_PATTERN = (rf"^https?://([A-Za-z0-9.-]+|\[({_IPV6})\])(:({_PORT}))?" r"([/?#][!-~]*)?$")
"""An outbound target: http or https, a host name in ASCII (punycode for others) or an IP
address (IPv6 in brackets), a port, printable ASCII after it."""
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
