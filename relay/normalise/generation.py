"""The `generation` schema (seed 001): `GET /v2/generate/{id}` and its webhook payload."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from relay.models import State, Update
from relay.normalise import fields
from relay.normalise.words import state_of, word_key


def read(payload: object, received_at: datetime) -> Update:
    """One generation status object (polled or pushed) as an update."""
    data = fields.as_object(payload)
    status = fields.required_text(data, "status", fields.MAX_WORD)
    state = state_of(status)
    progress = fields.number(data, "progress_percent", low=0, high=100)
    return Update(
        external_id=fields.required_text(data, "id"),
        provider_status=status,
        state=state,
        received_at=received_at,
        progress=None if progress is None else progress / 100,
        error=_error(data, status, state),
        output=_output(data) or None,
        created_at=fields.timestamp(data, "createdAt"),
        provider_data=_provider_data(data),
    )


def _error(data: Mapping[str, Any], status: str, state: State | None
           ) -> dict[str, Any] | None:
    # The polled object says `errorCode`; the webhook payload says `error_code`.
    code = fields.text(data, "errorCode", limit=fields.MAX_WORD) or fields.text(
        data, "error_code", limit=fields.MAX_WORD)
    message = fields.text(data, "error") or ""
    rejected = word_key(status) == "rejected"
    if not (code or message or state is State.FAILED):
        return None
    fallback = "rejected" if rejected else "generation_failed"
    return fields.error(code or fallback, message)


def _output(data: Mapping[str, Any]) -> dict[str, Any]:
    # The provider's own field names, so its documentation explains the output.
    return fields.compact(
        outputUrl=fields.text(data, "outputUrl", limit=fields.MAX_URL),
        outputDuration=fields.number(data, "outputDuration", low=0),
        outputFileName=fields.text(data, "outputFileName", limit=fields.MAX_TEXT),
        segments=fields.json_list(data, "segments"),
        segmentOutputUrl=fields.text(data, "segmentOutputUrl", limit=fields.MAX_URL),
        synthesizedAudioUrl=fields.text(data, "synthesizedAudioUrl", limit=fields.MAX_URL),
    )


def _provider_data(data: Mapping[str, Any]) -> dict[str, Any]:
    # Not `input`, `options` or `webhookUrl`: the first two are what the user sent, and the
    # last may hold relay's own webhook token, which a subscriber must not be shown.
    return fields.compact(
        model=fields.text(data, "model", limit=fields.MAX_WORD),
        projectId=fields.text(data, "projectId", limit=fields.MAX_ID),
        outputFileName=fields.text(data, "outputFileName", limit=fields.MAX_TEXT),
    )
