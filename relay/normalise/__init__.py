"""Normalise: one pure adapter per provider schema, and the merge rules.

An adapter turns one provider payload into `Update`s: no I/O, no clock reads (the receive time
is passed in). A payload that does not fit raises `PayloadError` naming the field.
`merge(job, update)` folds an update into a job (see `relay.normalise.merge`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from relay.models import Schema, Update
from relay.normalise import generation, jobstatus, story
from relay.normalise.merge import merge
from relay.normalise.words import state_of

Adapter = Callable[[object, datetime], Update]

ADAPTERS: dict[Schema, Adapter] = {
    Schema.STORY: story.read,
    Schema.GENERATION: generation.read,
    Schema.JOBSTATUS: jobstatus.read,
}


def read_update(schema: Schema, payload: object, received_at: datetime) -> Update:
    """The update one status object of `schema` reports."""
    return ADAPTERS[schema](payload, received_at)


__all__ = ["ADAPTERS", "merge", "read_update", "state_of", "story"]
