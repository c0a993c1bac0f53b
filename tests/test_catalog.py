"""The generation error catalog (seed 001, `GET /v2/errors`): read from any
of the shapes providers answer, tolerant of junk, immutable, and applied to errors without I/O."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from relay.models import Schema, isoformat
from relay.normalise import parse_catalog, read_update
from relay.normalise.catalog import Explanation, explain

PAYLOADS = Path(__file__).parent / "payloads"
START = datetime(2026, 3, 1, 10, 5, tzinfo=UTC)
NOW = isoformat(START)  # when the relay received each payload

INACCESSIBLE = {
    "code": "generation_input_video_inaccessible",
    "message": "The input video could not be downloaded.",
    "fix": "Make the video URL publicly readable, or pass a presigned URL that outlives the job.",
}
TIMEOUT = {
    "code": "generation_timeout",
    "message": "The generation timed out.",
    "suggestedFix": "Split the input into shorter segments and try again.",
    "retryable": True,
}
REJECTED = {
    "code": "generation_content_rejected",
    "message": "The input was rejected by moderation.",
    "suggested_fix": "Review the content policy before submitting again.",
    "retryable": False,
}
ENTRIES = [INACCESSIBLE, TIMEOUT, REJECTED]
EXPECTED = {
    "generation_input_video_inaccessible": Explanation(INACCESSIBLE["message"],
                                                       INACCESSIBLE["fix"], None),
    "generation_timeout": Explanation(TIMEOUT["message"], TIMEOUT["suggestedFix"], True),
    "generation_content_rejected": Explanation(REJECTED["message"], REJECTED["suggested_fix"],
                                               False),
}


def generation(name: str, **changes: Any) -> dict[str, Any]:
    body = json.loads((PAYLOADS / "generation" / f"{name}.json").read_text())["payload"]
    return {**body, **changes}


@pytest.mark.parametrize("answer", [
    ENTRIES,
    {"errors": ENTRIES},
    {entry["code"]: entry for entry in ENTRIES},
    {entry["code"]: {k: v for k, v in entry.items() if k != "code"} for entry in ENTRIES},
], ids=["a list", "errors wrapper", "keyed by code", "keyed by code alone"])
def test_every_shape_of_the_catalog_reads_to_the_same_mapping(answer):
    assert dict(parse_catalog(answer)) == EXPECTED


@pytest.mark.parametrize("junk", [
    "not an entry", 42, None, ["a", "list"],
    {"message": "no code at all"},
    {"code": 17, "message": "a code that is no string"},
    {"code": "c" * 300, "message": "a code longer than any code"},
    {"code": "bad\ud800code", "message": "a code that is not valid Unicode"},
])
def test_junk_entries_are_skipped_and_the_rest_kept(junk):
    assert dict(parse_catalog([junk, *ENTRIES])) == EXPECTED


def test_odd_fields_of_an_entry_are_left_out_and_the_entry_kept():
    entry = {"code": "generation_timeout", "message": 12, "fix": ["a", "list"],
             "suggested_fix": "Try again later.", "retryable": "maybe"}

    assert dict(parse_catalog([entry])) == {
        "generation_timeout": Explanation(None, "Try again later.", None)}


@pytest.mark.parametrize("answer", [None, 42, "errors", True, [], {}, {"errors": []}])
def test_an_answer_that_is_no_catalog_reads_as_an_empty_one(answer):
    assert dict(parse_catalog(answer)) == {}


def test_the_first_entry_of_a_code_wins():
    later = {**TIMEOUT, "message": "Another message."}
    assert parse_catalog([TIMEOUT, later])["generation_timeout"].message == TIMEOUT["message"]


def test_the_catalog_is_immutable_and_reading_leaves_the_answer_untouched():
    answer = {"errors": ENTRIES}
    original = copy.deepcopy(answer)

    catalog = parse_catalog(answer)

    assert answer == original
    with pytest.raises(TypeError):
        catalog["new_code"] = Explanation()  # type: ignore[index]


def test_a_known_code_gets_the_fix_and_keeps_the_providers_message():
    catalog = parse_catalog(ENTRIES)

    explained = explain({"code": "generation_timeout", "message": "Took over 10 minutes.",
                         "fix": None, "retryable": None}, catalog)

    assert explained == {"code": "generation_timeout", "message": "Took over 10 minutes.",
                         "fix": TIMEOUT["suggestedFix"], "retryable": True}


def test_a_known_code_without_a_message_gets_the_catalogs_message():
    explained = explain({"code": "generation_content_rejected", "message": ""},
                        parse_catalog(ENTRIES))

    assert explained == {"code": "generation_content_rejected", "message": REJECTED["message"],
                         "fix": REJECTED["suggested_fix"], "retryable": False}


def test_an_unknown_code_is_served_as_it_came():
    explained = explain({"code": "generation_failed", "message": ""}, parse_catalog(ENTRIES))

    assert explained == {"code": "generation_failed", "message": "", "fix": None,
                         "retryable": None}


def test_read_update_applies_a_catalog_to_a_polled_and_a_pushed_failure():
    catalog = parse_catalog({"errors": ENTRIES})

    polled = read_update(Schema.GENERATION, generation("failed", error=None), NOW, catalog)
    pushed = read_update(Schema.GENERATION, generation("webhook_failed_snake_case_error_code"),
                         NOW, catalog=catalog)

    assert polled.error == {"code": INACCESSIBLE["code"], "message": INACCESSIBLE["message"],
                            "fix": INACCESSIBLE["fix"], "retryable": None}
    assert pushed.error == {"code": "generation_timeout", "message": "The generation timed out.",
                            "fix": TIMEOUT["suggestedFix"], "retryable": True}


def test_without_a_catalog_or_an_error_read_update_is_unchanged():
    catalog = parse_catalog(ENTRIES)
    body = generation("completed")

    assert read_update(Schema.GENERATION, body, NOW, catalog) == read_update(
        Schema.GENERATION, body, NOW)
    failed = generation("failed")
    assert read_update(Schema.GENERATION, failed, NOW).error == {
        "code": INACCESSIBLE["code"], "message": INACCESSIBLE["message"], "fix": None,
        "retryable": None}
