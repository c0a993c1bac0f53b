"""The OpenAPI description against the relay itself: schemathesis sends each operation of
`/openapi.json` requests generated from it, valid and invalid ones, over real HTTP to a real
relay process (SQLite, an API key). Every answer must be no 5xx, a status code the operation
documents, with a body, content type and headers that match what it documents for that
status; a request the description calls invalid must be refused, a valid one accepted, and
one without the API key refused.

The operations are read from the document the relay serves (checked equal here), at import
time, as schemathesis's pytest plugin wants them; the relay they are sent to starts once for
the module. RELAY_FUZZ_EXAMPLES raises the examples per operation for a longer probe."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from relay import __version__
from relay.http.openapi import document
from tests.senders import WEBHOOK_SECRET
from tests.support import RelayProcess, free_port

API_KEY = "openapi-fuzz-key-0123456789"
EXAMPLES = int(os.environ.get("RELAY_FUZZ_EXAMPLES", "12"))
STREAM_EXAMPLES = max(1, EXAMPLES // 3)  # each event stream takes STREAM_QUIET to judge
STREAM_QUIET = 1.0  # seconds
SENT: list[str] = []  # the operation of every case sent, for the count printed at the end

schema = schemathesis.openapi.from_dict(document(__version__))


@schema.auth()
class ApiKey:
    """The API key on every case, except those generated without it on purpose."""

    def get(self, case, context):
        return API_KEY

    def set(self, case, data, context):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    directory: Path = tmp_path_factory.mktemp("openapi")
    config = directory / "relay.toml"
    config.write_text(f'[server]\nstore = "sqlite:///{directory}/relay.db"\n'
                      f'api_keys = ["{API_KEY}"]\n'
                      # Which names resolve to which addresses is no part of the description
                      # (the SSRF guard has its own tests): any well-formed URL is taken.
                      'allow_private_targets = true\n\n'
                      f'[providers.gen]\nschema = "generation"\n'
                      f'webhook_secret = "{WEBHOOK_SECRET}"\n\n'
                      f'[providers.jobs]\nschema = "jobstatus"\n')
    process = RelayProcess(config, free_port()).start()
    try:
        yield process
    finally:
        process.stop()
        counts = Counter(SENT)
        print(f"\nschemathesis: {len(SENT)} cases sent to {len(counts)} operations; most: "
              f"{counts.most_common(4)}")


def test_the_fuzzed_description_is_the_one_served(relay):
    assert httpx.get(f"{relay.url}/openapi.json").json() == document(__version__)


STREAMS = r"/events$"


@schema.exclude(path_regex=STREAMS).parametrize()
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_answer_is_one_the_description_documents(case, relay):
    SENT.append(case.operation.label)
    case.call_and_validate(base_url=relay.url, timeout=10)


# Streams: no coverage phase, whose many boundary cases would each wait STREAM_QUIET.
streams = schemathesis.openapi.from_dict(document(__version__)).include(path_regex=STREAMS)
streams.config.phases.coverage.enabled = False
streams.auth()(ApiKey)


@streams.parametrize()
@settings(max_examples=STREAM_EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_stream_answer_is_one_the_description_documents(case, relay):
    """An event stream never ends by itself: it is judged on what it sent before it went
    quiet for a while (its headers come at once, after the first page of its backlog)."""
    SENT.append(case.operation.label)
    case.call_and_validate(base_url=relay.url, timeout=(10, STREAM_QUIET))
