"""The merge rules of the job model, as one pure function.

Webhooks arrive late, twice and out of order, so an update is folded into the job under rules
that make the order of arrival matter as little as possible:

- a terminal state never changes again;
- a state never moves back (queued < running < terminal): a late `processing` after
  `completed`, or `pending` after `processing`, is stale and changes nothing;
- `progress` never goes backwards within a state, and an update behind the job's progress
  does not move the `stage` back either;
- `error` belongs to a failed or canceled job only;
- a report whose provider `updated_at` is older than the newest the job has seen is stale and
  changes nothing (that newest time is kept in `provider_data["updated_at"]`);
- an update that changes nothing is a duplicate: `merge` answers None and no event is made;
  the provider's `updated_at` moving on while nothing else changes is no news either;
- `version` counts the changes;
- `started_at` and `finished_at` come from the provider when it gives them, else from the
  receive time of the first update that implied them;
- `metadata` is the user's and never changes; a newer `provider_data` is laid over the older.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from relay.models import Job, State, Update, job_error

_RANK = {State.QUEUED: 0, State.RUNNING: 1, State.SUCCEEDED: 2, State.FAILED: 2,
         State.CANCELED: 2}
_STARTED = frozenset({State.RUNNING, State.SUCCEEDED})
_WITH_ERROR = frozenset({State.FAILED, State.CANCELED})
NEWEST = "updated_at"  # in provider_data: the newest provider time the job has seen


def merge(job: Job, update: Update) -> Job | None:
    """The job after `update`, or None when the update changes nothing."""
    if job.terminal or _behind(job.state, update.state) or _stale(job, update):
        return None
    state = update.state or job.state
    same_state = state is job.state
    received = update.received_at
    progress = _progress(job, update, state, same_state)
    stage = _stage(job, update, same_state)
    error = _error(update, state)
    output = update.output if update.output is not None else job.output
    created_at = update.created_at or job.created_at
    started_at = update.started_at or job.started_at or _implied_start(state, received)
    finished_at = (update.finished_at or received) if state.terminal else None
    provider_data = _provider_data(job.provider_data, update)
    if (state is job.state and update.provider_status == job.provider_status
            and progress == job.progress and stage == job.stage and error == job.error
            and output == job.output and created_at == job.created_at
            and started_at == job.started_at and finished_at == job.finished_at
            and _without_newest(provider_data) == _without_newest(job.provider_data)):
        return None
    # Built in one call, not with dataclasses.replace: this runs for every update.
    return Job(job.id, job.provider, job.schema, job.external_id, state, update.provider_status,
               progress, stage, error, output, job.topics, job.metadata, provider_data,
               created_at, started_at, finished_at, received, job.version + 1)


def _behind(current: State, reported: State | None) -> bool:
    return reported is not None and _RANK[reported] < _RANK[current]


def _progress(job: Job, update: Update, state: State, same_state: bool) -> float | None:
    if state is State.SUCCEEDED:
        return 1.0
    if not same_state:
        return update.progress
    if update.progress is None:
        return job.progress
    return max(update.progress, job.progress or 0.0)


def _stage(job: Job, update: Update, same_state: bool) -> str | None:
    if not same_state:
        return update.stage
    if _lags(job, update):
        return job.stage  # a late report: its stage is older than the job's
    return update.stage or job.stage


def _lags(job: Job, update: Update) -> bool:
    return (update.progress is not None and job.progress is not None
            and update.progress < job.progress)


def _implied_start(state: State, received: str) -> str | None:
    return received if state in _STARTED else None


def _error(update: Update, state: State) -> Mapping[str, Any] | None:
    if state not in _WITH_ERROR or update.error is None:
        return None
    return job_error(update.error)  # every error in one shape, whoever made it


def _stale(job: Job, update: Update) -> bool:
    seen = _moment(job.provider_data.get(NEWEST))
    reported = _moment(update.updated_at)
    return seen is not None and reported is not None and reported < seen


def _moment(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _provider_data(current: Mapping[str, Any], update: Update) -> Mapping[str, Any]:
    newest = {NEWEST: update.updated_at} if update.updated_at else {}
    if not (update.provider_data or newest):
        return current
    return {**current, **update.provider_data, **newest}


def _without_newest(data: Mapping[str, Any]) -> Mapping[str, Any]:
    if NEWEST not in data:
        return data
    return {key: value for key, value in data.items() if key != NEWEST}
