"""The `story` schema (seeds 000 and 002): one status object, or the `GET /v1/jobs` list."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay.errors import PayloadError
from relay.models import State, Update
from relay.normalise import fields
from relay.normalise.words import state_of

# Protection only: far above any `limit` relay asks for (the seed documents no maximum), and
# entries past it are reported unreadable, so their jobs are still read one by one.
MAX_LIST = 5000
DEFAULT_ERROR_CODE = "story_failed"


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A list entry that could not be read: where it is, its job id when that much could be
    read (so the job can be read on its own), and what was wrong."""

    index: int
    external_id: str | None
    problem: str


@dataclass(frozen=True, slots=True)
class ListPage:
    """One `GET /v1/jobs` page read entry by entry: one bad entry spoils only itself."""

    updates: tuple[Update, ...] = ()
    unreadable: tuple[Unreadable, ...] = ()


def read(payload: object, received_at: str) -> Update:
    """One story status object (`GET /v1/generate/story/{id}`, `GET /v1/jobs/{id}`)."""
    data = fields.as_object(payload)
    reader = fields.Reader(data)
    status = reader.status()
    state = state_of(status)
    progress, stage = _progress(reader)
    return Update(
        external_id=fields.required_id(data, "job_id"),
        provider_status=status,
        state=state,
        received_at=received_at,
        progress=progress,
        stage=stage,
        error=_error(reader, state),
        output=_output(reader),
        created_at=reader.timestamp("created_at"),
        started_at=reader.timestamp("started_at"),
        finished_at=reader.timestamp("completed_at"),
        ignored=reader.noted(),  # arguments are evaluated in order: this one after every read
    )


def read_list(payload: object, received_at: str) -> ListPage:
    """The `GET /v1/jobs` page: `{"generations": [...], "total", "limit", "offset"}`. Only a
    page that is not an object, or whose `generations` is not a list, is refused."""
    data = fields.as_object(payload)
    items = data.get("generations")
    if items is None:  # the seed allows `null` for an empty page
        return ListPage()
    if not isinstance(items, list):
        raise PayloadError("generations", "expected a list")
    entries = [_entry(item, index, received_at) for index, item in enumerate(items)]
    return ListPage(tuple(e for e in entries if isinstance(e, Update)),
                    tuple(e for e in entries if isinstance(e, Unreadable)))


def _entry(item: object, index: int, received_at: str) -> Update | Unreadable:
    name = f"generations[{index}]"
    if not isinstance(item, dict):
        return Unreadable(index, None, f"{name}: expected a JSON object")
    if index >= MAX_LIST:
        return Unreadable(index, _entry_id(item), f"{name}: past the {MAX_LIST} entries "
                                                  "relay reads of one page")
    try:
        return read(item, received_at)
    except PayloadError as exc:
        return Unreadable(index, _entry_id(item), f"{name}.{exc.message}")


def _entry_id(item: dict[str, Any]) -> str | None:
    try:
        return fields.required_id(item, "job_id")
    except PayloadError:
        return None


def _progress(reader: fields.Reader) -> tuple[float | None, str | None]:
    """`scenes_completed / scenes_total`, and the stage that says it: "scene 2 of 4"."""
    done, total = _scenes(reader)
    if done is None or total is None:
        return None, None
    return done / total, f"scene {done} of {total}"


def _scenes(reader: fields.Reader) -> tuple[int | None, int | None]:
    done = reader.integer("scenes_completed")
    total = reader.integer("scenes_total", low=1)  # 0 scenes gives no fraction: it says nothing
    if done is not None and total is not None and done > total:
        reader.ignore("scenes_completed")
        done = total
    return done, total


def _error(reader: fields.Reader, state: State | None) -> dict[str, Any] | None:
    # "Present only when status is failed"; a failed job gets an error even without one.
    error = reader.child("error")
    if error is None:
        return fields.error(DEFAULT_ERROR_CODE, "") if state is State.FAILED else None
    return fields.error(error.token("code") or DEFAULT_ERROR_CODE, error.text("message") or "")


def _output(reader: fields.Reader) -> dict[str, Any] | None:
    result = reader.json("result")
    if result is None:
        return None
    return result if isinstance(result, dict) else {"result": result}
