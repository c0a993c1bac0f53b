"""The poll scheduler's timing pieces, without I/O: due-time heap, back-off, gate, Retry-After."""

from __future__ import annotations

import random
from datetime import timedelta
from email.utils import format_datetime

import pytest

from relay.config import ProviderConfig
from relay.errors import ProviderError
from relay.ingest.providers import segment
from relay.models import Schema, utcnow
from relay.polling.schedule import Gate, Pacing, Schedule, Tracked
from relay.signing import retry_after

PROVIDER = ProviderConfig("p", Schema.JOBSTATUS, base_url="http://x", poll_interval=1.0,
                            poll_max_interval=10.0)


def test_schedule_hands_out_due_keys_earliest_first_and_honours_rescheduling():
    schedule = Schedule()
    schedule.set("a", 5.0)
    schedule.set("b", 1.0)
    schedule.set("a", 0.5)  # moved earlier: the old entry is stale
    schedule.set("c", 9.0)
    schedule.discard("c")
    assert schedule.pop_due(2.0) == (0.5, "a")
    assert schedule.pop_due(2.0) == (1.0, "b")
    assert schedule.pop_due(2.0) is None
    assert schedule.next_due() is None
    assert len(schedule) == 0


def test_schedule_compacts_when_rescheduling_leaves_stale_entries():
    schedule = Schedule()
    for step in range(10_000):
        schedule.set("job", float(step))
    assert len(schedule._heap) < 200
    assert schedule.pop_due(1e9) == (9999.0, "job")


def test_intervals_back_off_with_jitter_to_the_cap_and_return_to_fast_on_a_change():
    pacing = Pacing(PROVIDER, random.Random(1))
    tracked = Tracked("j", "e", interval=1.0, heard=0.0)
    delays = [pacing.after_poll(tracked, changed=False) for _ in range(12)]
    assert all(0 < d <= 10.0 for d in delays)
    assert delays[-1] >= 10.0 * 0.8 and tracked.interval == 10.0
    assert pacing.after_poll(tracked, changed=True) <= 1.0 * 1.2
    assert tracked.interval == 1.0
    assert 0.5 <= pacing.first() <= 1.0


def test_gate_closes_for_retry_after_and_grows_its_own_pause_without_one():
    gate = Gate(PROVIDER)
    gate.throttle(2.0, now=100.0)
    assert gate.delay(100.0) == 2.0
    assert gate.delay(102.0) == 0.0
    gate.throttle(None, now=200.0)
    gate.throttle(None, now=200.0)
    assert gate.delay(200.0) == 2.0  # 1 s, then 2 s: doubling from poll_interval
    gate.accept()
    gate.throttle(None, now=300.0)
    assert gate.delay(300.0) == 1.0


def test_gate_lets_one_probe_at_a_time_through_an_auth_failure_and_backs_off():
    gate = Gate(PROVIDER)
    refused = ProviderError("401", status=401)
    gate.deny(refused, now=0.0)
    gate.deny(refused, now=0.0)  # the rest of the first wave does not stretch the pause
    assert gate.delay(0.0) == 1.0
    assert gate.start_call() is True
    assert gate.delay(5.0) is None  # the probe is out
    gate.deny(refused, now=5.0)
    gate.end_call(True)
    assert gate.delay(5.0) == 2.0
    gate.accept()
    assert gate.unauthorized is None and gate.start_call() is False


@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("", None), ("2", 2.0), ("0.5", 0.5), ("-3", 0.0), ("soon", None),
    ("nan", None), ("99999", 900.0),
])
def test_retry_after_reads_seconds_and_caps_them(header, expected):
    assert retry_after(header) == expected


def test_retry_after_reads_an_http_date():
    when = format_datetime(utcnow() + timedelta(seconds=30), usegmt=True)
    assert 25 <= (retry_after(when) or 0) <= 30


def test_a_job_id_stays_one_path_segment():
    assert segment("a/../b?c") == "a%2F..%2Fb%3Fc"
    with pytest.raises(ProviderError):
        segment("..")


def test_an_unverified_body_too_deeply_nested_to_parse_names_no_job():
    from relay.ingest.webhooks import named_job
    from relay.models import Schema

    assert named_job(Schema.GENERATION, b"[" * 100_000) is None
    assert named_job(Schema.GENERATION, b'{"id": "g-1", "status": "x"}') == "g-1"


@pytest.mark.parametrize(("status", "one_job", "expected"), [
    (401, True, "account"), (402, True, "account"), (403, False, "account"),
    (429, True, "throttled"), (503, False, "throttled"),
    (404, True, "missing"), (410, True, "refused"), (451, True, "refused"),
    (400, True, "refused"), (422, True, "refused"),
    (400, False, "refused"), (404, False, "refused"),  # a list refused: jobs are read alone
    (408, True, "passing"), (409, True, "passing"), (425, True, "passing"),
    (500, True, "passing"), (502, True, "passing"), (504, False, "passing"),
    (418, True, "passing"), (None, True, "passing"),
])
def test_the_poll_answer_table(status, one_job, expected):
    from relay.polling.answers import meaning

    assert meaning(ProviderError("x", status=status), one_job=one_job) == expected


def test_an_unreadable_answer_is_passing_trouble_whatever_its_status():
    from relay.ingest.providers import UnreadableAnswer
    from relay.polling.answers import meaning, outcome

    error = UnreadableAnswer("too large", status=200)
    assert (meaning(error), outcome(error)) == ("passing", "unreadable")


@pytest.mark.parametrize(("status", "code", "detail", "expected"), [
    (451, "content_blocked", "Blocked.", {"code": "content_blocked", "message": "Blocked."}),
    (404, None, None, {"code": "provider_not_found", "message": "p: GET /x answered 404"}),
    (410, None, None, {"code": "provider_not_found", "message": "p: GET /x answered 410"}),
    (422, None, "Bad id.", {"code": "http_422", "message": "Bad id."}),
])
def test_a_refusal_keeps_the_provider_s_code_and_message_and_is_not_retryable(
        status, code, detail, expected):
    from relay.ingest.providers import AnswerError
    from relay.polling.answers import refusal

    error = AnswerError(f"p: GET /x answered {status}", status=status, retry_after=None,
                        code=code, detail=detail)
    assert refusal(error) == {**expected, "fix": None, "retryable": False}
