"""What a provider's answer to a poll means: the poll-answer table, as one function.

    answer                                         meaning     the pollers
    401, 402, 403                                  ACCOUNT     pause the provider, probe gently;
                                                               jobs stay as they are
    429, 503                                       THROTTLED   pause the provider until Retry-After
    404                                            MISSING     the third in a row fails the job
    410, 451; 400 or 422 to a one-job status call  REFUSED     the job fails, `retryable: false`
    408, 409, 425, 5xx, other statuses, timeouts,  PASSING     back this job off (Retry-After where
    unreadable answers                                         given) and try again

A list call (`story`'s `GET /v1/jobs`) refers to no one job: a 400, 404, 410, 422 or 451 to
it is REFUSED too, and the pollers read the jobs it was for one by one, so that each job's own
answer decides about it. Nothing here does I/O.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from relay.errors import ProviderError
from relay.ingest.providers import AnswerError, UnreadableAnswer

ACCOUNT = frozenset({401, 402, 403})
THROTTLED = frozenset({429, 503})
GONE = frozenset({410, 451})
BAD_REQUEST = frozenset({400, 422})
LIST_REFUSED = frozenset({400, 404, 410, 422, 451})
NOT_FOUND = frozenset({404, 410})


class Meaning(StrEnum):
    ACCOUNT = "account"
    THROTTLED = "throttled"
    MISSING = "missing"
    REFUSED = "refused"
    PASSING = "passing"


def meaning(error: ProviderError, *, one_job: bool = True) -> Meaning:
    """What `error`, the answer to a one-job status call or (not `one_job`) to a list call,
    means for the provider and its jobs."""
    status = error.status
    if status is None or isinstance(error, UnreadableAnswer):
        return Meaning.PASSING
    if status in ACCOUNT:
        return Meaning.ACCOUNT
    if status in THROTTLED:
        return Meaning.THROTTLED
    if not one_job:
        return Meaning.REFUSED if status in LIST_REFUSED else Meaning.PASSING
    if status == 404:
        return Meaning.MISSING
    if status in GONE or status in BAD_REQUEST:
        return Meaning.REFUSED
    return Meaning.PASSING


def outcome(error: ProviderError) -> str:
    """The `relay_polls` outcome label of a failed call."""
    status = error.status
    if isinstance(error, UnreadableAnswer):
        return "unreadable"
    if status is None:
        return "unreachable"
    if status in THROTTLED:
        return "rate_limited"
    if status in ACCOUNT:
        return "unauthorized"
    if status in NOT_FOUND:
        return "not_found"
    if status in GONE or status in BAD_REQUEST:
        return "refused"
    return "server_error" if status >= 500 else "client_error"


def refusal(error: ProviderError) -> dict[str, Any]:
    """The error of a job the provider refuses: its envelope's code and message where it sent
    them, else `provider_not_found` (404, 410) or `http_<status>`; never worth retrying."""
    code = error.code if isinstance(error, AnswerError) else None
    detail = error.detail if isinstance(error, AnswerError) else None
    if not code:
        code = "provider_not_found" if error.status in NOT_FOUND else f"http_{error.status}"
    return {"code": code, "message": detail or str(error), "fix": None, "retryable": False}


def provider_code(error: ProviderError) -> str | None:
    """The code the provider's error envelope gave, if any (shown in /readyz)."""
    return error.code if isinstance(error, AnswerError) else None
