"""The `jobstatus` schema (seed 003): `GET /getJobStatus?jobId=`."""

from __future__ import annotations

from typing import Any

from relay.models import State, Update
from relay.normalise import fields
from relay.normalise.words import is_cancelling, state_of

CANCELLING_STAGE = "cancelling"


def read(payload: object, received_at: str) -> Update:
    """One jobstatus object as an update."""
    data = fields.as_object(payload)
    reader = fields.Reader(data)
    status = reader.status()
    state = state_of(status)
    updated_at = reader.timestamp("updated_at")
    return Update(
        external_id=fields.required_id(data, "id"),
        provider_status=status,
        state=state,
        received_at=received_at,
        progress=_progress(reader),
        stage=_stage(reader, status),
        error=_error(reader, state),
        created_at=reader.timestamp("created_at"),
        # The seed has no finish time; a final report's last update is when the job ended.
        finished_at=updated_at if state is not None and state.terminal else None,
        provider_data=_provider_data(reader),
        updated_at=updated_at,
        ignored=reader.noted(),  # arguments are evaluated in order: this one after every read
    )


def _progress(reader: fields.Reader) -> float | None:
    # Both are read, so an odd value in either is noted; `progress` wins when it is usable.
    progress = reader.number("progress", low=0, high=100, clamp=True)
    percent = reader.number("percent_complete", low=0, high=100, clamp=True)
    value = progress if progress is not None else percent
    return None if value is None else value / 100


def _stage(reader: fields.Reader, status: str) -> str | None:
    stage = reader.text("progress_stage")
    # A job being cancelled still runs (it may yet complete); the stage says what it does.
    return CANCELLING_STAGE if is_cancelling(status) else stage


def _error(reader: fields.Reader, state: State | None) -> dict[str, Any] | None:
    # The seed gives only a message; a failed job gets an error even without one.
    message = reader.text("error_message") or ""
    if not message and state is not State.FAILED:
        return None
    return fields.error("job_canceled" if state is State.CANCELED else "job_failed", message)


def _provider_data(reader: fields.Reader) -> dict[str, Any]:
    return fields.compact(
        title=reader.text("title"),
        user_id=reader.identifier("user_id"),
        project_id=reader.identifier("project_id"),
        is_byok=reader.boolean("is_byok"),
        reasoning_model=reader.token("reasoning_model"),
        writing_model=reader.token("writing_model"),
        function_model=reader.token("function_model"),
        is_starred=reader.boolean("is_starred"),
    )
