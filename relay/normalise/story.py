"""The `story` schema (seeds 000 and 002): one status object, or the `GET /v1/jobs` list."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from relay.errors import PayloadError
from relay.models import Update
from relay.normalise import fields
from relay.normalise.words import state_of

MAX_LIST = 100


def read(payload: object, received_at: datetime) -> Update:
    """One story status object (`GET /v1/generate/story/{id}`, `GET /v1/jobs/{id}`)."""
    data = fields.as_object(payload)
    status = fields.required_text(data, "status", fields.MAX_WORD)
    done = fields.integer(data, "scenes_completed")
    total = fields.integer(data, "scenes_total", low=1)
    if done is not None and total is not None and done > total:
        raise PayloadError("scenes_completed", f"{done} is more than scenes_total {total}")
    return Update(
        external_id=fields.required_text(data, "job_id"),
        provider_status=status,
        state=state_of(status),
        received_at=received_at,
        progress=done / total if done is not None and total else None,
        stage=f"scene {done} of {total}" if done is not None and total else None,
        error=_error(data),
        output=_output(data),
        created_at=fields.text(data, "created_at", limit=64),
        started_at=fields.text(data, "started_at", limit=64),
        finished_at=fields.text(data, "completed_at", limit=64),
    )


def read_list(payload: object, received_at: datetime) -> list[Update]:
    """The `GET /v1/jobs` page: `{"generations": [...], "total", "limit", "offset"}`."""
    data = fields.as_object(payload)
    items = data.get("generations") or []
    if not isinstance(items, list):
        raise PayloadError("generations", "expected a list")
    if len(items) > MAX_LIST:
        raise PayloadError("generations", f"more than {MAX_LIST} entries")
    return [_read_entry(item, index, received_at) for index, item in enumerate(items)]


def _read_entry(item: object, index: int, received_at: datetime) -> Update:
    try:
        return read(item, received_at)
    except PayloadError as exc:
        raise PayloadError(f"generations[{index}].{exc.field}", exc.message.split(": ", 1)[-1]
                           ) from exc


def _error(data: Mapping[str, Any]) -> dict[str, str] | None:
    error = data.get("error")
    if error is None:
        return None
    error = fields.as_object(error, "error")
    code = fields.text(error, "code", limit=fields.MAX_WORD)
    message = fields.text(error, "message")
    return {"code": code or "story_failed", "message": message or ""}


def _output(data: Mapping[str, Any]) -> dict[str, Any] | None:
    result = fields.json_value(data, "result")
    if result is None:
        return None
    return result if isinstance(result, dict) else {"result": result}
