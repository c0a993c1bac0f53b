"""The `generation` error catalog (seed 001: `GET /v2/errors`, "the full catalog of codes,
messages and suggested fixes"), read and applied without I/O.

`parse_catalog` reads what the endpoint answered into an immutable mapping from code to
`Explanation`; `explain` fills in an error from it. Fetching the catalog (at startup, then
hourly) is the poll side's job: it hands the parsed catalog to `read_update`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from relay.models import job_error
from relay.normalise import fields

MAX_ENTRIES = 10_000
FIX_KEYS = ("fix", "suggestedFix", "suggested_fix")


@dataclass(frozen=True, slots=True)
class Explanation:
    """What the catalog says about one error code."""

    message: str | None = None
    fix: str | None = None
    retryable: bool | None = None


Catalog = Mapping[str, Explanation]
EMPTY: Catalog = MappingProxyType({})


def parse_catalog(payload: object) -> Catalog:
    """The catalog in any of the shapes providers answer: a list of objects, `{"errors":
    [...]}`, or an object keyed by code; each entry with `code`, `message` and a fix in `fix`,
    `suggestedFix` or `suggested_fix`. Junk entries are skipped; this never raises. The first
    entry of a code wins."""
    entries: dict[str, Explanation] = {}
    for key, item in _items(payload)[:MAX_ENTRIES]:
        read = _entry(key, item)
        if read is not None and read[0] not in entries:
            entries[read[0]] = read[1]
    return MappingProxyType(entries)


def explain(error: Mapping[str, Any], catalog: Catalog) -> dict[str, Any]:
    """`error` in the served shape, with the catalog's fix for a known code, its message
    where the provider sent none, and whether to retry where the provider did not say."""
    served = job_error(error)
    known = catalog.get(served["code"])
    if known is None:
        return served
    return {**served,
            "message": served["message"] or known.message or "",
            "fix": served["fix"] or known.fix,
            "retryable": known.retryable if served["retryable"] is None else served["retryable"]}


def _items(payload: object) -> list[tuple[str | None, object]]:
    if isinstance(payload, dict) and isinstance(payload.get("errors"), list):
        payload = payload["errors"]
    if isinstance(payload, list):
        return [(None, item) for item in payload]
    if isinstance(payload, dict):
        return list(payload.items())
    return []


def _entry(key: str | None, item: object) -> tuple[str, Explanation] | None:
    if not isinstance(item, dict):
        return None
    reader = fields.Reader(item)
    # In the keyed shape the key is the code, should the entry not repeat it.
    code = reader.token("code") or fields.Reader({"code": key}).token("code")
    if not code:
        return None
    fix = next((found for found in map(reader.text, FIX_KEYS) if found), None)
    return code, Explanation(reader.text("message"), fix, reader.boolean("retryable"))
