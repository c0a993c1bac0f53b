"""relay.codec reads every document as the standard library's json does, and writes JSON that
reads back as the value it was given: orjson's speed where it agrees with `json`, `json`
where it would not. And what a user gives relay comes back exactly, through HTTP, the store
and SSE."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay import codec
from tests.support import make_settings, redis_url, running_relay, sse

pytestmark = pytest.mark.anyio

# What orjson alone would lose: integers past 64 bits.
METADATA = {"order": 123456789012345678901234567890, "title": "café", "ratio": 0.1,
            "nested": {"big": -98765432109876543210, "small": [1, 2.5, None, True]}}


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path) -> str:
    return f"sqlite:///{tmp_path}/relay.db" if request.param == "sqlite" else redis_url()


async def test_a_jobs_metadata_comes_back_exactly_from_the_api_and_the_stream(store_url):
    async with running_relay(make_settings(store_url)) as relay:
        exact = (await relay.track("gen", "exact", metadata=METADATA))["job"]["id"]
        plain = (await relay.track("gen", "plain", metadata={"title": "café ☕"}))["job"]["id"]
        for external_id in ("exact", "plain"):
            answer = await relay.webhook({"id": external_id, "status": "COMPLETED"})
            assert answer.status_code == 202, answer.text
        job = (await relay.client.get(f"/v1/jobs/{exact}")).json()
        async with sse(relay.client, f"/v1/jobs/{exact}/events") as stream:
            event = await stream.next()
        # A terminal job's stream sends its event and ends, so it can be read whole.
        raw = (await relay.client.get(f"/v1/jobs/{plain}/events")).text
    assert job["metadata"] == METADATA and job["state"] == "succeeded"
    assert event.data["metadata"] == METADATA
    assert '"title":"café ☕"' in raw  # written as UTF-8, not as \u escapes


# Every value json.dumps can write: integers of any size, NaN and the infinities, strings with
# lone surrogates, and the containers of them.
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20)


def read(reader: Any, document: bytes | str) -> tuple[str, Any]:
    """What `reader` makes of `document`: its value (as JSON text, so NaN equals NaN) or the
    kind of error it raised."""
    try:
        return "value", json.dumps(reader(document), sort_keys=True)
    except (ValueError, RecursionError) as exc:
        return "error", type(exc).__name__


@given(values)
def test_a_document_json_writes_is_read_as_json_reads_it(value):
    text = json.dumps(value)
    for document in (text, text.encode(), json.dumps(value, ensure_ascii=False)):
        if isinstance(document, str) and not _encodable(document):
            continue  # a lone surrogate written raw: no such document arrives as bytes
        assert read(codec.loads, document) == read(json.loads, document)


@pytest.mark.parametrize("document", [
    b'{"id": 123456789012345678901234567890}',  # past 64 bits: orjson would make it a float
    b'{"id": -9223372036854775809}',
    b'{"id": 18446744073709551615}',
    b'{"progress": NaN, "eta": Infinity, "low": -Infinity}',
    b'{"name": "\\ud800"}',  # a lone surrogate, escaped
    b'\xef\xbb\xbf{"id": "bom"}',
    b'{"id": 1e400}',
    b'{"id": "\xff"}',  # not UTF-8
    b'[' * 5000 + b']' * 5000,
    b'{"id": 1, "id": 2}',
    b'',
    b'{"id": "job-1", "note": "caf\xc3\xa9"}',
])
def test_the_documents_orjson_reads_otherwise_are_read_as_json_reads_them(document):
    assert read(codec.loads, document) == read(json.loads, document)
    assert read(codec.loads, document.decode("latin-1")) == read(
        json.loads, document.decode("latin-1"))


@given(values)
def test_what_is_written_reads_back_as_the_value_its_nan_and_infinities_as_null(value):
    for written in (codec.dumps(value), codec.dumps_bytes(value)):
        back = _text(json.loads(written))
        assert back in (_text(value), _text(_finite(value)))


def test_what_orjson_cannot_write_is_written_by_json():
    for value in ({"id": 10**30}, {"name": "\ud800"}, {1: "a"}):
        assert codec.dumps(value) == json.dumps(value, separators=(",", ":"))
        assert codec.dumps_bytes(value) == codec.dumps(value).encode()


def test_written_json_is_compact_utf8_with_no_nan():
    assert codec.dumps({"a": [1, 2.5], "b": "é"}) == '{"a":[1,2.5],"b":"é"}'
    assert codec.dumps_bytes({"p": math.nan, "q": math.inf}) == b'{"p":null,"q":null}'


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _finite(value: Any) -> Any:
    """`value` with NaN and the infinities as None, as orjson writes them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(item) for item in value]
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    return value
