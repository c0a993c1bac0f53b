"""Reading typed, capped fields out of untrusted provider JSON.

Every reader raises `PayloadError` naming the field, so a bad payload is a 422 that says
what is wrong, and nothing from it is stored.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from relay.errors import PayloadError
from relay.models import isoformat

MAX_ID = 256
MAX_WORD = 64
MAX_TEXT = 4096
MAX_URL = 8192
MAX_ITEMS = 1000
MAX_DEPTH = 8
MAX_TIMESTAMP = 64
MAX_NUMERIC_ID = 2**64  # past this a "numeric id" is not an id

# JSON may escape a lone surrogate ("\ud800"); Python decodes it to a str that cannot be
# encoded as UTF-8 again, so one stored would fail every later response that serves it.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def as_object(payload: object, name: str = "payload") -> Mapping[str, Any]:
    if not isinstance(payload, dict):
        raise PayloadError(name, "expected a JSON object")
    return payload


def text(payload: Mapping[str, Any], name: str, *, required: bool = False,
         limit: int = MAX_TEXT) -> str | None:
    value = payload.get(name)
    if value is None:
        if required:
            raise PayloadError(name, "required")
        return None
    if _numeric_id(name, value):
        value = str(value)  # numeric ids are common enough to accept as text
    if not isinstance(value, str):
        raise PayloadError(name, "expected a string")
    if required and not value.strip():
        raise PayloadError(name, "must not be empty")
    if len(value) > limit:
        raise PayloadError(name, f"longer than {limit} characters")
    if _SURROGATE.search(value):
        raise PayloadError(name, "not valid Unicode (a lone surrogate)")
    return value


def _numeric_id(name: str, value: object) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and name.endswith("id")
            and abs(value) < MAX_NUMERIC_ID)


def required_text(payload: Mapping[str, Any], name: str, limit: int = MAX_ID) -> str:
    value = text(payload, name, required=True, limit=limit)
    assert value is not None
    return value


def number(payload: Mapping[str, Any], name: str, *, low: float = -math.inf,
           high: float = math.inf) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(name, "expected a number")
    try:
        result = float(value)  # an integer of 400 digits does not fit a float
    except OverflowError:
        result = math.inf
    if not math.isfinite(result):
        raise PayloadError(name, "expected a finite number")
    if not low <= result <= high:
        raise PayloadError(name, f"expected a number from {low:g} to {high:g}, got {result:g}")
    return result


def integer(payload: Mapping[str, Any], name: str, *, low: int = 0) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(name, "expected an integer")
    if value < low:
        raise PayloadError(name, f"expected an integer of at least {low}, got {value}")
    return int(value)


def boolean(payload: Mapping[str, Any], name: str) -> bool | None:
    value = payload.get(name)
    if value is not None and not isinstance(value, bool):
        raise PayloadError(name, "expected true or false")
    return value


def timestamp(payload: Mapping[str, Any], name: str) -> str | None:
    """An ISO 8601 date-time, served the relay's way (UTC, `...T03:04:05.678Z`) so every
    timestamp of a job has one format; one without an offset is taken as UTC."""
    value = text(payload, name, limit=MAX_TIMESTAMP)
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return isoformat(moment)
    except (ValueError, OverflowError):
        raise PayloadError(name, f"expected an ISO 8601 date-time, got {value!r}") from None


@contextlib.contextmanager
def within(prefix: str) -> Iterator[None]:
    """Name the fields of a nested object by their path: `error.code`, `generations[3].status`."""
    try:
        yield
    except PayloadError as exc:
        problem = exc.message[len(exc.field) + 2:]
        raise PayloadError(f"{prefix}.{exc.field}", problem) from None


def json_value(payload: Mapping[str, Any], name: str) -> Any:
    """Any JSON value kept as given (a result object, a segment list), within the caps of
    depth, items and string length, and servable as JSON again (finite numbers, valid text)."""
    value = payload.get(name)
    _check_shape(value, name, 0)
    return value


def json_list(payload: Mapping[str, Any], name: str) -> list[Any] | None:
    """A JSON list kept as given, under the caps of `json_value`."""
    value = json_value(payload, name)
    if value is not None and not isinstance(value, list):
        raise PayloadError(name, "expected a list")
    return value


def _check_shape(value: Any, name: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise PayloadError(name, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        _check_string(value, name)
    elif isinstance(value, float) and not math.isfinite(value):
        raise PayloadError(name, "holds a number that is not finite")
    elif isinstance(value, dict | list):
        _check_container(value, name, depth)


def _check_container(value: dict[Any, Any] | list[Any], name: str, depth: int) -> None:
    if len(value) > MAX_ITEMS:
        raise PayloadError(name, f"holds more than {MAX_ITEMS} items")
    children: Iterable[Any] = value
    if isinstance(value, dict):
        for key in value:
            _check_string(key, name)
        children = value.values()
    for child in children:
        _check_shape(child, name, depth + 1)


def _check_string(value: object, name: str) -> None:
    if not isinstance(value, str):
        raise PayloadError(name, "holds an object key that is not a string")
    if len(value) > MAX_URL:
        raise PayloadError(name, f"holds a string longer than {MAX_URL} characters")
    if _SURROGATE.search(value):
        raise PayloadError(name, "holds text that is not valid Unicode (a lone surrogate)")


def compact(**values: Any) -> dict[str, Any]:
    """The given values without the Nones; an empty dict when all are None."""
    return {key: value for key, value in values.items() if value is not None}


def error(code: str, message: str) -> dict[str, Any]:
    """An error in CONTRACT section 2's shape; `fix` and `retryable` stay null until a
    catalog (or the provider) knows them."""
    return {"code": code, "message": message, "fix": None, "retryable": None}
