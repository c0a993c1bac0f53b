"""Normalise: one pure adapter per provider schema, and the merge rules.

An adapter turns one provider payload into `Update`s: no I/O, no clock reads (the receive time
is passed in). Only a payload that is not an object, or has no job id or no status, raises
`PayloadError` naming the field; any other odd field is left out, clamped or cut and named in
`Update.ignored`. `merge(job, update)` folds an update into a job (see
`relay.normalise.merge`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from relay.models import Schema, Update
from relay.normalise import generation, jobstatus, story
from relay.normalise.catalog import Catalog, explain, parse_catalog
from relay.normalise.merge import merge
from relay.normalise.words import state_of

Adapter = Callable[[object, str], Update]

ADAPTERS: dict[Schema, Adapter] = {
    Schema.STORY: story.read,
    Schema.GENERATION: generation.read,
    Schema.JOBSTATUS: jobstatus.read,
}


def read_update(schema: Schema, payload: object, received_at: str,
                catalog: Catalog | None = None) -> Update:
    """The update one status object of `schema` reports; with a `catalog` (the provider's
    error catalog, see `relay.normalise.catalog`), its error is explained from it."""
    update = ADAPTERS[schema](payload, received_at)
    if catalog and update.error is not None:
        return dataclasses.replace(update, error=explain(update.error, catalog))
    return update


__all__ = ["ADAPTERS", "Catalog", "merge", "parse_catalog", "read_update", "state_of", "story"]
