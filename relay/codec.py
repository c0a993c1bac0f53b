"""JSON on the relay's hot paths: webhook and API bodies, and the job's JSON (`Job.to_json`,
`Job.from_json`) in the store, in SSE frames and in outbound deliveries. orjson parses and
writes it in a tenth of the time the standard library takes, which was some 10 % of the relay's
CPU per webhook (tests/benchmarks/bench_ingest.py).

The standard library stays the judge of what a document means. Where orjson would differ,
`json` does the work:
- an integer past 64 bits: orjson reads it as a float, losing digits, and cannot write it
  (a body with a run of 19 digits is parsed by `json`);
- what strict JSON forbids and `json` accepts (NaN, Infinity, a lone surrogate, a leading
  byte-order mark): orjson refuses it, and `json` reads it or refuses it as before;
- a string holding a lone surrogate, or a key that is not a string: orjson cannot write it.
Written JSON is compact. orjson writes non-ASCII characters as UTF-8 where `json` escapes them,
and a NaN as null (JSON has no NaN: a browser's JSON.parse fails on one).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_LONG_INTEGER_BYTES = re.compile(rb"\d{19}")
_LONG_INTEGER_TEXT = re.compile(r"\d{19}")
_STANDARD = json.JSONEncoder(separators=(",", ":"))


def loads(document: bytes | str) -> Any:
    """The value of a JSON document, as `json.loads` reads it; ValueError (JSONDecodeError,
    UnicodeDecodeError) or RecursionError for one it cannot read."""
    long_integer = (_LONG_INTEGER_BYTES.search(document) if isinstance(document, bytes)
                    else _LONG_INTEGER_TEXT.search(document))
    if long_integer is None:
        try:
            return orjson.loads(document)
        except orjson.JSONDecodeError:
            pass
    return json.loads(document)


def dumps(value: Any) -> str:
    """`value` as compact JSON text."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError: see the module docstring
        return _STANDARD.encode(value)


def dumps_bytes(value: Any) -> bytes:
    """`value` as compact JSON, UTF-8 encoded."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return _STANDARD.encode(value).encode()
