"""The `jobstatus` schema (seed 003): `GET /getJobStatus?jobId=`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from relay.models import State, Update
from relay.normalise import fields
from relay.normalise.words import state_of


def read(payload: object, received_at: datetime) -> Update:
    """One jobstatus object as an update."""
    data = fields.as_object(payload)
    status = fields.required_text(data, "status", fields.MAX_WORD)
    state = state_of(status)
    return Update(
        external_id=fields.required_text(data, "id"),
        provider_status=status,
        state=state,
        received_at=received_at,
        progress=_progress(data),
        stage=fields.text(data, "progress_stage", limit=fields.MAX_TEXT),
        error=_error(data, state),
        created_at=fields.timestamp(data, "created_at"),
        provider_data=_provider_data(data),
    )


def _progress(data: Mapping[str, Any]) -> float | None:
    progress = fields.number(data, "progress", low=0, high=100)
    percent = fields.number(data, "percent_complete", low=0, high=100)
    value = progress if progress is not None else percent
    return None if value is None else value / 100


def _error(data: Mapping[str, Any], state: State | None) -> dict[str, Any] | None:
    # The seed gives only a message; a failed job gets an error even without one.
    message = fields.text(data, "error_message") or ""
    if not message and state is not State.FAILED:
        return None
    return fields.error("job_canceled" if state is State.CANCELED else "job_failed", message)


def _provider_data(data: Mapping[str, Any]) -> dict[str, Any]:
    return fields.compact(
        title=fields.text(data, "title"),
        user_id=fields.text(data, "user_id", limit=fields.MAX_ID),
        project_id=fields.text(data, "project_id", limit=fields.MAX_ID),
        is_byok=fields.boolean(data, "is_byok"),
        reasoning_model=fields.text(data, "reasoning_model", limit=fields.MAX_ID),
        writing_model=fields.text(data, "writing_model", limit=fields.MAX_ID),
        function_model=fields.text(data, "function_model", limit=fields.MAX_ID),
        is_starred=fields.boolean(data, "is_starred"),
    )
