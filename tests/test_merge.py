"""Properties of `relay.normalise.merge`, for any order of
arrival: webhooks come late, twice and out of order, and the job must not care."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.models import Job, Schema, State, Update, isoformat
from relay.normalise import merge, read_update

BASE = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
RECEIVED = isoformat(BASE)
PROVIDER_START = "2026-03-01T09:00:00.000Z"
PROVIDER_FINISH = "2026-03-01T09:30:00.000Z"
RANK = {State.QUEUED: 0, State.RUNNING: 1, State.SUCCEEDED: 2, State.FAILED: 2,
        State.CANCELED: 2}
WORDS = {State.QUEUED: "pending", State.RUNNING: "processing", State.SUCCEEDED: "completed",
         State.FAILED: "failed", State.CANCELED: "cancelled", None: "mystery_word"}


def fresh_job(version: int = 1) -> Job:
    return Job(id="job-1", provider="p", schema="story", external_id="ext-1",
               created_at=isoformat(BASE - timedelta(hours=1)), version=version)


STAGES = (None, "researching", "outlining", "writing")
OUTPUTS = (None, {"url": "a"}, {"url": "b"})
PROVIDER_DATA = ({}, {"title": "t"}, {"title": "u", "user_id": "42"})


def report(state: State | None, progress: int | None, stage: int, output: int,
           provider_data: int, started: bool, finished: bool) -> Update:
    """One provider report in `state`, with the fields that state may carry."""
    terminal = state is not None and state.terminal
    return Update(
        external_id="ext-1",
        provider_status=WORDS[state],
        state=state,
        received_at=RECEIVED,
        progress=None if progress is None else progress / 100,
        stage=STAGES[stage],
        error={"code": "boom", "message": "it broke"} if state is State.FAILED else None,
        output=OUTPUTS[output] if state is State.SUCCEEDED else None,
        started_at=PROVIDER_START if started else None,
        finished_at=PROVIDER_FINISH if finished and terminal else None,
        provider_data=PROVIDER_DATA[provider_data],
    )


def updates_of(states: Sequence[State | None]) -> st.SearchStrategy[Update]:
    return st.builds(report, st.sampled_from(states), st.none() | st.integers(0, 100),
                     st.integers(0, 3), st.integers(0, 2), st.integers(0, 2), st.booleans(),
                     st.booleans())


# Each property shares one generator, so fewer examples apiece still cover it well, fast.
examples = settings(max_examples=50)

NON_TERMINAL = [State.QUEUED, State.RUNNING, None]
TERMINAL = [State.SUCCEEDED, State.FAILED, State.CANCELED]


@st.composite
def deliveries(draw, *, terminals: int = 1):
    """A job's distinct updates (at most `terminals` of them terminal), and two orders of
    arrival, each a shuffle of all of them with repeats mixed in."""
    updates = draw(st.lists(updates_of(NON_TERMINAL), max_size=6))
    updates += draw(st.lists(updates_of(TERMINAL), max_size=terminals))
    rng = draw(st.randoms(use_true_random=False))
    orders = []
    for _ in range(2):
        order = list(range(len(updates)))
        order += [rng.randrange(len(updates)) for _ in range(rng.randrange(4))] if updates else []
        rng.shuffle(order)
        orders.append(order)
    return updates, orders


def arrive(updates: Sequence[Update], order: Sequence[int]) -> list[Update]:
    """The updates in `order`, each received one second after the one before."""
    return [dataclasses.replace(updates[i], received_at=isoformat(BASE + timedelta(seconds=n)))
            for n, i in enumerate(order)]


def fold(job: Job, arrivals: Sequence[Update]) -> list[tuple[Update, Job, Job | None]]:
    """Each arrival with the job before it and what merge made of it (None: no change)."""
    trace = []
    for update in arrivals:
        merged = merge(job, update)
        trace.append((update, job, merged))
        job = merged or job
    return trace


def final(trace, start: Job) -> Job:
    return next((after for _, _, after in reversed(trace) if after is not None), start)


def considered(update: Update, before: Job) -> bool:
    """Whether the rules let `update` count at all: not after a terminal state, not behind."""
    return not before.terminal and (update.state is None
                                    or RANK[update.state] >= RANK[before.state])


@given(deliveries())
@examples
def test_any_order_with_repeats_ends_in_the_same_terminal_state(case):
    updates, (one, other) = case
    start = fresh_job()

    first = final(fold(start, arrive(updates, one)), start)
    second = final(fold(start, arrive(updates, other)), start)

    assert (first.state, first.terminal, first.error) == (second.state, second.terminal,
                                                          second.error)
    terminal = [u.state for u in updates if u.state is not None and u.state.terminal]
    known = [RANK[u.state] for u in updates if u.state is not None]
    if terminal:
        assert first.state is terminal[0]
    else:
        assert RANK[first.state] == max(known, default=0)
    if first.state is State.SUCCEEDED:
        assert first.progress == 1.0


@given(deliveries(terminals=3))
@examples
def test_a_terminal_state_never_changes_again(case):
    updates, (order, _) = case

    trace = fold(fresh_job(), arrive(updates, order))

    for _, before, after in trace:
        if before.terminal:
            assert after is None
    terminal = [before for _, before, _ in trace if before.terminal]
    assert all(job == terminal[0] for job in terminal)


@given(deliveries(terminals=3))
@examples
def test_the_state_never_moves_back_and_progress_never_decreases_within_a_state(case):
    updates, (order, _) = case

    trace = fold(fresh_job(), arrive(updates, order))

    for _, before, after in trace:
        if after is None:
            continue
        assert RANK[after.state] >= RANK[before.state]
        assert after.progress is None or 0.0 <= after.progress <= 1.0
        if after.state is before.state and before.progress is not None:
            assert after.progress is not None and after.progress >= before.progress


@given(deliveries(terminals=2))
@examples
def test_version_counts_changes_and_a_no_op_changes_nothing(case):
    updates, (order, _) = case
    start = fresh_job()

    trace = fold(start, arrive(updates, order))

    for update, before, after in trace:
        if after is None:
            continue
        assert after.version == before.version + 1
        assert after.updated_at == update.received_at
        assert after.replace(version=0, updated_at=None) != before.replace(version=0,
                                                                           updated_at=None)
        later = dataclasses.replace(update, received_at=isoformat(
            datetime.fromisoformat(update.received_at) + timedelta(hours=1)))
        assert merge(after, later) is None  # the same report again is a duplicate
    changes = sum(after is not None for _, _, after in trace)
    assert final(trace, start).version == start.version + changes


@given(deliveries(terminals=2))
@examples
def test_started_and_finished_come_from_the_provider_else_the_first_update_implying_them(case):
    updates, (order, _) = case
    start = fresh_job()

    trace = fold(start, arrive(updates, order))
    job = final(trace, start)

    counted = [(u, after) for u, before, after in trace if considered(u, before)]
    if any(u.started_at for u, _ in counted):
        assert job.started_at == PROVIDER_START
    else:
        implied = next((u.received_at for u, after in counted if after is not None
                        and after.state in (State.RUNNING, State.SUCCEEDED)), None)
        assert job.started_at == implied
    finisher = next((u for u, after in counted if after is not None and after.terminal), None)
    if finisher is None:
        assert job.finished_at is None
    else:
        assert job.finished_at == (finisher.finished_at or finisher.received_at)


def test_an_update_from_behind_changes_nothing():
    running = merge(fresh_job(), Update("ext-1", "processing", State.RUNNING, RECEIVED,
                                        progress=0.5, stage="scene 2 of 4"))
    assert running is not None

    second, third = (isoformat(BASE + timedelta(seconds=n)) for n in (1, 2))
    late_pending = Update("ext-1", "pending", State.QUEUED, second, progress=0.0)
    late_scene = Update("ext-1", "processing", State.RUNNING, third, progress=0.25,
                        stage="scene 1 of 4")

    assert merge(running, late_pending) is None
    assert merge(running, late_scene) is None  # neither progress nor stage goes back


def test_an_error_belongs_only_to_a_failed_or_canceled_job():
    job = merge(fresh_job(), Update("ext-1", "processing", State.RUNNING, RECEIVED,
                                    error={"code": "warning", "message": "retrying"}))
    assert job is not None and job.error is None
    done = merge(job, Update("ext-1", "completed", State.SUCCEEDED, RECEIVED,
                             error={"code": "x", "message": ""}))
    assert done is not None and done.error is None


def test_metadata_stays_what_the_user_gave_and_provider_fields_go_to_provider_data():
    # Once merge put the provider's fields under metadata["provider"]; now metadata is the
    # user's alone, even a key of theirs named "provider".
    job = fresh_job().replace(metadata={"provider": "mine", "team": "a"})

    merged = merge(job, Update("ext-1", "pending", State.QUEUED, RECEIVED,
                               provider_data={"title": "t"}))

    assert merged is not None
    assert merged.metadata == {"provider": "mine", "team": "a"}
    assert merged.provider_data == {"title": "t"}
    assert merged.to_dict()["provider_data"] == {"title": "t"}


def test_a_newer_updates_provider_data_is_laid_over_the_older():
    first = merge(fresh_job(), Update("ext-1", "queued", State.QUEUED, RECEIVED, provider_data={
        "title": "Draft", "is_starred": False, "user_id": "42"}))
    assert first is not None

    second = merge(first, Update("ext-1", "running", State.RUNNING, RECEIVED,
                                 provider_data={"title": "Final", "is_starred": True}))

    assert second is not None
    assert second.provider_data == {"title": "Final", "is_starred": True, "user_id": "42"}
    assert Job.from_dict(second.to_dict()) == second


def test_a_job_stored_before_provider_data_existed_reads_with_an_empty_one():
    served = fresh_job().replace(metadata={"team": "a"}).to_dict()
    del served["provider_data"]

    job = Job.from_dict(served)

    assert (job.metadata, job.provider_data) == ({"team": "a"}, {})


def test_a_job_stored_with_the_providers_fields_in_metadata_reads_them_as_provider_data():
    # Before provider_data, merge kept them in metadata["provider"], a key users could not use.
    served = fresh_job().to_dict()
    del served["provider_data"]
    served["metadata"] = {"team": "a", "provider": {"model": "lipsync-2"}}

    job = Job.from_dict(served)

    assert (job.metadata, job.provider_data) == ({"team": "a"}, {"model": "lipsync-2"})


def test_every_error_is_served_with_code_message_fix_and_retryable():
    # The pollers' own errors (e.g. provider_not_found) carry only a code and a message.
    failed = merge(fresh_job(), Update("ext-1", "not_found", State.FAILED, RECEIVED,
                                       error={"code": "provider_not_found", "message": "gone"}))

    assert failed is not None
    assert failed.to_dict()["error"] == {"code": "provider_not_found", "message": "gone",
                                         "fix": None, "retryable": None}


# -- the provider's updated_at -------------------------------------------------------------------

def at(minute: int) -> str:
    return isoformat(BASE + timedelta(minutes=minute))


def test_a_report_older_than_the_newest_updated_at_seen_is_stale_and_makes_no_event():
    job = merge(fresh_job(), Update("ext-1", "in_progress", State.RUNNING, RECEIVED, progress=0.5,
                                    stage="writing", updated_at=at(5)))
    assert job is not None and job.provider_data["updated_at"] == at(5)

    late = Update("ext-1", "in_progress", State.RUNNING, RECEIVED, progress=0.6, stage="outlining",
                  updated_at=at(4))
    late_end = Update("ext-1", "completed", State.SUCCEEDED, RECEIVED, updated_at=at(3))

    assert merge(job, late) is None
    assert merge(job, late_end) is None
    newer = merge(job, dataclasses.replace(late, updated_at=at(6)))
    assert newer is not None and (newer.progress, newer.provider_data["updated_at"]) == (0.6,
                                                                                          at(6))


def test_the_providers_clock_moving_on_alone_makes_no_event():
    job = merge(fresh_job(), Update("ext-1", "in_progress", State.RUNNING, RECEIVED, progress=0.5,
                                    updated_at=at(5)))
    assert job is not None

    assert merge(job, Update("ext-1", "in_progress", State.RUNNING, RECEIVED, progress=0.5,
                             updated_at=at(9))) is None


def test_reports_without_updated_at_are_never_stale():
    job = merge(fresh_job(), Update("ext-1", "in_progress", State.RUNNING, RECEIVED, progress=0.5,
                                    updated_at=at(5)))
    assert job is not None

    done = merge(job, Update("ext-1", "completed", State.SUCCEEDED, RECEIVED))

    assert done is not None and done.state is State.SUCCEEDED
    assert done.provider_data["updated_at"] == at(5)  # the newest seen is kept


@given(st.lists(st.tuples(st.sampled_from(NON_TERMINAL + TERMINAL), st.integers(0, 100)),
                min_size=1, max_size=8), st.randoms(use_true_random=False))
@examples
def test_no_report_older_than_one_already_taken_is_ever_taken(reports, rng):
    updates = [dataclasses.replace(report(state, progress, 0, 0, 0, False, False),
                                   updated_at=at(minute))
               for minute, (state, progress) in enumerate(reports)]
    order = list(range(len(updates)))
    rng.shuffle(order)

    trace = fold(fresh_job(), arrive(updates, order))

    newest = None
    for update, _, after in trace:
        if after is None:
            continue
        assert newest is None or update.updated_at >= newest
        newest = update.updated_at
        assert after.provider_data["updated_at"] == newest


# -- jobstatus cancelling ------------------------------------------------------------------------

def jobstatus(name: str, **changes) -> dict:
    body = json.loads((PAYLOADS / "jobstatus" / f"{name}.json").read_text())["payload"]
    return {**body, **changes}


def test_a_cancelling_job_keeps_running_and_may_still_complete():
    running = merge(fresh_job(), read_update(Schema.JOBSTATUS, jobstatus("in_progress"), RECEIVED))
    assert running is not None

    cancelling = merge(running, read_update(Schema.JOBSTATUS, jobstatus("cancelling"), RECEIVED))
    assert cancelling is not None
    assert (cancelling.state, cancelling.terminal, cancelling.stage) == (
        State.RUNNING, False, "cancelling")
    done = merge(cancelling, read_update(Schema.JOBSTATUS, jobstatus("completed"), RECEIVED))

    assert done is not None
    assert (done.state, done.terminal, done.finished_at) == (
        State.SUCCEEDED, True, "2026-03-01T10:04:00.000Z")


def test_a_cancelling_job_that_stops_becomes_canceled():
    cancelling = merge(fresh_job(),
                       read_update(Schema.JOBSTATUS, jobstatus("cancelling"), RECEIVED))
    assert cancelling is not None

    stopped = merge(cancelling, read_update(Schema.JOBSTATUS, jobstatus("cancelled"), RECEIVED))

    assert stopped is not None and (stopped.state, stopped.terminal) == (State.CANCELED, True)


# -- the same properties on real-shaped payloads -----------------------------------------------

PAYLOADS = Path(__file__).parent / "payloads"
LIFECYCLES = {
    Schema.GENERATION: ["pending", "processing_with_progress", "completed"],
    Schema.STORY: ["pending", "processing_with_scenes", "failed_with_error"],
    Schema.JOBSTATUS: ["queued", "percent_complete_only", "in_progress", "cancelled"],
}


def lifecycle(schema: Schema) -> list[Update]:
    return [read_update(schema, json.loads((PAYLOADS / schema.value / f"{name}.json")
                                           .read_text())["payload"], RECEIVED)
            for name in LIFECYCLES[schema]]


@given(st.sampled_from(list(Schema)), st.data())
@examples
def test_fixture_payloads_in_any_order_end_in_their_terminal_state(schema, data):
    updates = lifecycle(schema)
    indices = list(range(len(updates)))
    repeats = data.draw(st.lists(st.sampled_from(indices), max_size=3))
    order = data.draw(st.permutations(indices + repeats))
    trace = fold(fresh_job(), arrive(updates, order))

    job = final(trace, fresh_job())

    assert job.state is updates[-1].state
    assert job.error == updates[-1].error
