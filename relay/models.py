"""The normalised job model: what every provider schema is translated into.

`Update` is what an adapter reads out of one provider payload; `Job` is the merged state the
relay serves; `Event` is one stored change of a job, with its cursor.
This module imports nothing from relay but its JSON codec (relay.codec).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

from relay.codec import dumps, loads

JSON = dict[str, Any]
OPS_TOPIC = "relay:ops"
"""The topic of the operational events (`relay.subscription.failing`, `…disabled`,
`relay.provider.unauthorized`, `…recovered`): not job events, they are not in the log."""


class State(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELED})


class Schema(StrEnum):
    STORY = "story"
    GENERATION = "generation"
    JOBSTATUS = "jobstatus"

    @property
    def pushes_webhooks(self) -> bool:
        return self is Schema.GENERATION


class Source(StrEnum):
    WEBHOOK = "webhook"
    POLL = "poll"
    API = "api"


@dataclass(frozen=True, slots=True)
class Update:
    """One provider report about one job, as read by a schema adapter.

    `state` is None when the provider's status word is unknown: the job keeps its state and
    `provider_status` records the word. Timestamps are written in the relay's UTC form
    (`isoformat`): `received_at` is when the relay received the report; the others are the
    provider's, checked, or None; `updated_at` is the provider's own time of this report,
    which lets `merge` tell a stale report from a fresh one. `provider_data` holds the
    provider's other documented fields. `ignored` names, by path (`progress_percent`,
    `segments[2].segmentOutputUrl`), each optional field that was left out, clamped or cut
    because it was of the wrong type, out of range or over a cap.
    """

    external_id: str
    provider_status: str
    state: State | None
    received_at: str
    progress: float | None = None
    stage: str | None = None
    error: Mapping[str, Any] | None = None
    output: Mapping[str, Any] | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    provider_data: Mapping[str, Any] = field(default_factory=dict)
    updated_at: str | None = None
    ignored: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Job:
    """The normalised job. `metadata` is the user's, as tracked;
    `provider_data` is what the provider reported besides the mapped fields."""

    id: str
    provider: str
    schema: str
    external_id: str
    state: State = State.QUEUED
    provider_status: str | None = None
    progress: float | None = None
    stage: str | None = None
    error: Mapping[str, Any] | None = None
    output: Mapping[str, Any] | None = None
    topics: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    provider_data: Mapping[str, Any] = field(default_factory=dict)
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    updated_at: str | None = None
    version: int = 0

    @property
    def terminal(self) -> bool:
        return self.state.terminal

    def replace(self, **changes: Any) -> Job:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> JSON:
        return {
            "id": self.id,
            "provider": self.provider,
            "schema": self.schema,
            "external_id": self.external_id,
            "state": self.state.value,
            "terminal": self.terminal,
            "provider_status": self.provider_status,
            "progress": self.progress,
            "stage": self.stage,
            "error": job_error(self.error) if self.error is not None else None,
            "output": dict(self.output) if self.output is not None else None,
            "topics": list(self.topics),
            "metadata": dict(self.metadata),
            "provider_data": dict(self.provider_data),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "updated_at": self.updated_at,
            "version": self.version,
        }

    def to_json(self) -> str:
        """The job as stored, framed and delivered: `to_dict` as compact JSON."""
        return dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> Job:
        return cls.from_dict(loads(text))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Job:
        metadata, provider_data = _split_legacy(data)
        return cls(
            id=data["id"],
            provider=data["provider"],
            schema=data["schema"],
            external_id=data["external_id"],
            state=State(data["state"]),
            provider_status=data.get("provider_status"),
            progress=data.get("progress"),
            stage=data.get("stage"),
            error=data.get("error"),
            output=data.get("output"),
            topics=tuple(data.get("topics") or ()),
            metadata=metadata,
            provider_data=provider_data,
            created_at=data.get("created_at"),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            updated_at=data.get("updated_at"),
            version=data.get("version", 0),
        )


class Head(Protocol):
    """What the readers of the log ask of every event (which subscribers want it, whether
    the poll scheduler must act), answerable without decoding the whole job: a `Job` is one,
    and so is the `JobHead` a store keeps beside a job it hands over still encoded."""

    @property
    def id(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def external_id(self) -> str: ...
    @property
    def state(self) -> State: ...
    @property
    def version(self) -> int: ...
    @property
    def topics(self) -> tuple[str, ...]: ...
    @property
    def terminal(self) -> bool: ...


class JobHead(NamedTuple):
    """A job's head, kept beside its JSON (a named tuple: made for every event an instance
    reads, it costs a third of a frozen dataclass)."""

    id: str
    provider: str
    external_id: str
    state: State
    version: int
    topics: tuple[str, ...]

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


class Event:
    """One stored change of a job. `cursor` is opaque and orders events within a store.

    `head` answers the questions every reader of the log asks of every event. A store may
    hand the job over still in its JSON (`Event.encoded`), decoded when `job` is first read:
    an instance on a shared log reads every event any instance writes, and most of them only
    to find that no one here wants them.
    """

    __slots__ = ("_body", "_job", "cursor", "head", "received_at", "source")
    cursor: str
    head: Head
    source: Source
    received_at: str

    def __init__(self, cursor: str, job: Job, source: Source, received_at: str) -> None:
        self.cursor, self.head, self.source, self.received_at = cursor, job, source, received_at
        self._job: Job | None = job
        self._body = ""

    @classmethod
    def encoded(cls, cursor: str, head: JobHead, body: str, source: Source,
                received_at: str) -> Event:
        """The event of the job whose JSON (`Job.to_dict`) is `body` and whose head is `head`."""
        event = cls.__new__(cls)
        event.cursor, event.head, event.source, event.received_at = (
            cursor, head, source, received_at)
        event._job, event._body = None, body
        return event

    @property
    def job(self) -> Job:
        if self._job is None:
            self._job = Job.from_json(self._body)
            self._body = ""
        return self._job

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (self.cursor, self.source, self.received_at, self.job) == (
            other.cursor, other.source, other.received_at, other.job)

    __hash__ = None  # type: ignore[assignment]  # as a dataclass with eq and no frozen

    def __repr__(self) -> str:
        return (f"Event(cursor={self.cursor!r}, job={self.job!r}, source={self.source!r}, "
                f"received_at={self.received_at!r})")

    def to_dict(self) -> JSON:
        return {
            "cursor": self.cursor,
            "received_at": self.received_at,
            "source": self.source.value,
            "job": self.job.to_dict(),
        }


def _split_legacy(data: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """`metadata` and `provider_data` of a stored job. Jobs stored before `provider_data`
    existed kept the provider's fields in `metadata["provider"]` (a key tracking refused to
    users), so there it is moved out, and metadata is again only what the user gave."""
    metadata = data.get("metadata") or {}
    if "provider_data" in data:
        return metadata, data["provider_data"] or {}
    legacy = metadata.get("provider")
    if not isinstance(legacy, Mapping):
        return metadata, {}
    return {k: v for k, v in metadata.items() if k != "provider"}, dict(legacy)


def job_error(error: Mapping[str, Any]) -> JSON:
    """An error in the shape the job model serves: `code`, `message`, `fix`, `retryable`
    (the last two null when unknown), whatever subset of them it was made with."""
    return {"code": error.get("code") or "", "message": error.get("message") or "",
            "fix": error.get("fix"), "retryable": error.get("retryable")}


def isoformat(moment: datetime) -> str:
    """UTC timestamps as the API serves them: `2026-01-02T03:04:05.678Z`."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utcnow() -> datetime:
    return datetime.now(UTC)


def now() -> str:
    """The time now, as the API serves times (`isoformat`)."""
    return isoformat(utcnow())
