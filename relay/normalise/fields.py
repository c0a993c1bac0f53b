"""Reading typed, capped fields out of untrusted provider JSON.

Every reader raises `PayloadError` naming the field, so a bad payload is a 422 that says
what is wrong, and nothing from it is stored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from relay.errors import PayloadError

MAX_ID = 256
MAX_WORD = 64
MAX_TEXT = 4096
MAX_URL = 8192
MAX_ITEMS = 1000
MAX_DEPTH = 8


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
    if isinstance(value, int | float) and not isinstance(value, bool) and name.endswith("id"):
        value = str(value)  # numeric ids are common enough to accept as text
    if not isinstance(value, str):
        raise PayloadError(name, "expected a string")
    if required and not value.strip():
        raise PayloadError(name, "must not be empty")
    if len(value) > limit:
        raise PayloadError(name, f"longer than {limit} characters")
    return value


def required_text(payload: Mapping[str, Any], name: str, limit: int = MAX_ID) -> str:
    value = text(payload, name, required=True, limit=limit)
    assert value is not None
    return value


def number(payload: Mapping[str, Any], name: str, *, low: float = -math.inf,
           high: float = math.inf) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PayloadError(name, "expected a number")
    if not low <= value <= high:
        raise PayloadError(name, f"expected a number from {low:g} to {high:g}, got {value:g}")
    return float(value)


def integer(payload: Mapping[str, Any], name: str, *, low: int = 0) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(name, "expected an integer")
    if value < low:
        raise PayloadError(name, f"expected an integer of at least {low}, got {value}")
    return value


def json_value(payload: Mapping[str, Any], name: str) -> Any:
    """Any JSON value kept as given (a result object, a segment list), within depth and size caps."""
    value = payload.get(name)
    _check_shape(value, name, 0)
    return value


def _check_shape(value: Any, name: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise PayloadError(name, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str) and len(value) > MAX_URL:
        raise PayloadError(name, f"holds a string longer than {MAX_URL} characters")
    if isinstance(value, dict | list) and len(value) > MAX_ITEMS:
        raise PayloadError(name, f"holds more than {MAX_ITEMS} items")
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        _check_shape(child, name, depth + 1)


def compact(**values: Any) -> dict[str, Any]:
    """The given values without the Nones; an empty dict when all are None."""
    return {key: value for key, value in values.items() if value is not None}
