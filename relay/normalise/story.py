"""The `story` schema (seeds 000 and 002): one status object, or the `GET /v1/jobs` list."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from relay.errors import PayloadError
from relay.models import State, Update
from relay.normalise import fields
from relay.normalise.words import state_of

MAX_LIST = 100
DEFAULT_ERROR_CODE = "story_failed"


def read(payload: object, received_at: datetime) -> Update:
    """One story status object (`GET /v1/generate/story/{id}`, `GET /v1/jobs/{id}`)."""
    data = fields.as_object(payload)
    status = fields.required_text(data, "status", fields.MAX_WORD)
    state = state_of(status)
    done, total = _scenes(data)
    return Update(
        external_id=fields.required_text(data, "job_id"),
        provider_status=status,
        state=state,
        received_at=received_at,
        progress=done / total if done is not None and total is not None else None,
        stage=f"scene {done} of {total}" if done is not None and total is not None else None,
        error=_error(data, state),
        output=_output(data),
        created_at=fields.timestamp(data, "created_at"),
        started_at=fields.timestamp(data, "started_at"),
        finished_at=fields.timestamp(data, "completed_at"),
    )


def read_list(payload: object, received_at: datetime) -> list[Update]:
    """The `GET /v1/jobs` page: `{"generations": [...], "total", "limit", "offset"}`."""
    data = fields.as_object(payload)
    items = data.get("generations")
    if items is None:  # the seed allows `null` for an empty page
        return []
    if not isinstance(items, list):
        raise PayloadError("generations", "expected a list")
    if len(items) > MAX_LIST:
        raise PayloadError("generations", f"more than {MAX_LIST} entries")
    return [_read_entry(item, f"generations[{index}]", received_at)
            for index, item in enumerate(items)]


def _read_entry(item: object, name: str, received_at: datetime) -> Update:
    entry = fields.as_object(item, name)
    with fields.within(name):
        return read(entry, received_at)


def _scenes(data: Mapping[str, Any]) -> tuple[int | None, int | None]:
    done = fields.integer(data, "scenes_completed")
    total = fields.integer(data, "scenes_total", low=1)
    if done is not None and total is not None and done > total:
        raise PayloadError("scenes_completed", f"{done} is more than scenes_total {total}")
    return done, total


def _error(data: Mapping[str, Any], state: State | None) -> dict[str, Any] | None:
    # "Present only when status is failed"; a failed job gets an error even without one.
    error = data.get("error")
    if error is None:
        return fields.error(DEFAULT_ERROR_CODE, "") if state is State.FAILED else None
    error = fields.as_object(error, "error")
    with fields.within("error"):
        code = fields.text(error, "code", limit=fields.MAX_WORD)
        message = fields.text(error, "message")
    return fields.error(code or DEFAULT_ERROR_CODE, message or "")


def _output(data: Mapping[str, Any]) -> dict[str, Any] | None:
    result = fields.json_value(data, "result")
    if result is None:
        return None
    return result if isinstance(result, dict) else {"result": result}
