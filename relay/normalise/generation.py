"""The `generation` schema (seed 001): `GET /v2/generate/{id}` and its webhook payload."""

from __future__ import annotations

from typing import Any

from relay.models import State, Update
from relay.normalise import fields
from relay.normalise.words import state_of, word_key

SEGMENT_URL = "segmentOutputUrl"


def read(payload: object, received_at: str) -> Update:
    """One generation status object (polled or pushed) as an update."""
    data = fields.as_object(payload)
    reader = fields.Reader(data)
    status = reader.status()
    state = state_of(status)
    progress = reader.number("progress_percent", low=0, high=100, clamp=True)
    return Update(
        external_id=fields.required_id(data, "id"),
        provider_status=status,
        state=state,
        received_at=received_at,
        progress=None if progress is None else progress / 100,
        error=_error(reader, status, state),
        output=_output(reader) or None,
        created_at=reader.timestamp("createdAt"),
        provider_data=_provider_data(reader),
        ignored=reader.noted(),  # arguments are evaluated in order: this one after every read
    )


def _error(reader: fields.Reader, status: str, state: State | None) -> dict[str, Any] | None:
    # The polled object says `errorCode`; the webhook payload says `error_code`.
    code = reader.token("errorCode") or reader.token("error_code")
    message = reader.text("error") or ""
    if not (code or message or state is State.FAILED):
        return None
    fallback = "rejected" if word_key(status) == "rejected" else "generation_failed"
    return fields.error(code or fallback, message)


def _output(reader: fields.Reader) -> dict[str, Any]:
    # The provider's own field names, so its documentation explains the output.
    return fields.compact(
        outputUrl=reader.token("outputUrl", fields.MAX_URL),
        outputDuration=reader.number("outputDuration", low=0),
        outputFileName=reader.token("outputFileName", fields.MAX_TEXT),
        segments=_segments(reader),
        segmentOutputUrl=reader.token(SEGMENT_URL, fields.MAX_URL),
        synthesizedAudioUrl=reader.token("synthesizedAudioUrl", fields.MAX_URL),
    )


def _provider_data(reader: fields.Reader) -> dict[str, Any]:
    # Not `input`, `options` or `webhookUrl`: the first two are what the user sent, and the
    # last may hold relay's own webhook token, which a subscriber must not be shown.
    return fields.compact(
        model=reader.token("model"),
        projectId=reader.identifier("projectId"),
        outputFileName=reader.token("outputFileName", fields.MAX_TEXT),
    )


def _segments(reader: fields.Reader) -> list[Any] | None:
    """The segments as given, each one on its own: one past the caps is left out, not the
    list. Seed 001 says objects, but anything else servable is passed on as the provider
    sent it, as the output always was."""
    value = reader.data.get("segments")
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > fields.MAX_ITEMS:
        reader.ignore("segments")
        return None
    kept: list[Any] = []
    for index, item in enumerate(value):
        name = f"segments[{index}]"
        if fields.fits(_without_url(item), depth=1):
            kept.append(_checked_url(reader, name, item))
        else:
            reader.ignore(name)
    return kept


def _without_url(item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    return {key: value for key, value in item.items() if key != SEGMENT_URL}


def _checked_url(reader: fields.Reader, name: str, item: Any) -> Any:
    """A segment may carry its own output URL; one that is no usable URL is dropped alone."""
    if not isinstance(item, dict) or item.get(SEGMENT_URL) is None:
        return item
    url = fields.Reader(item, reader.name(name), reader.ignored).token(SEGMENT_URL,
                                                                       fields.MAX_URL)
    return {key: url if key == SEGMENT_URL else value for key, value in item.items()
            if key != SEGMENT_URL or url is not None}
