"""Reading typed, capped fields out of untrusted provider JSON.

relay is strict only where it must be: a payload that is not an object, or
has no usable job id or status, raises `PayloadError` naming the field (a 422 for a webhook).
Every other field is optional, and a `Reader` takes what it can of it: a value that is missing
or null is None; one of the wrong type, out of range, over a cap or not storable (a lone
surrogate, a number that is not finite) is left out, clamped or cut, and its path is noted, so
one odd field never costs the rest of an update.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
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


def required_id(data: Mapping[str, Any], name: str) -> str:
    """The job id: without one the update belongs to no job, so the payload is refused. An id
    over the cap is refused too, since a cut id would name another job."""
    value = data.get(name)
    if _numeric_id(value):
        value = str(value)  # numeric ids are common enough to accept as text
    value = _required_string(name, value)
    if len(value) > MAX_ID:
        raise PayloadError(name, f"longer than {MAX_ID} characters")
    return value


def _required_string(name: str, value: object) -> str:
    if value is None:
        raise PayloadError(name, "required")
    if not isinstance(value, str):
        raise PayloadError(name, "expected a string")
    if not value.strip():
        raise PayloadError(name, "must not be empty")
    if _SURROGATE.search(value):
        raise PayloadError(name, "not valid Unicode (a lone surrogate)")
    return value


def _numeric_id(value: object) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)
            and abs(value) < MAX_NUMERIC_ID)


class Reader:
    """The optional fields of one provider object, read leniently. `ignored` collects the
    path of each field that was not taken as sent; nested readers share it."""

    def __init__(self, data: Mapping[str, Any], path: str = "",
                 ignored: dict[str, None] | None = None) -> None:
        self.data = data
        self.path = path
        # A dict as an ordered set: a thousand odd segments must not cost a quadratic scan.
        self.ignored: dict[str, None] = {} if ignored is None else ignored

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def ignore(self, key: str) -> None:
        self.ignored[self.name(key)] = None

    def noted(self) -> tuple[str, ...]:
        return tuple(self.ignored)

    def status(self, key: str = "status") -> str:
        """The required status word; one over the cap is cut (it is only ever looked up)."""
        value = _required_string(self.name(key), self.data.get(key))
        if len(value) > MAX_WORD:
            self.ignore(key)
            value = value[:MAX_WORD]
        return value

    def text(self, key: str, limit: int = MAX_TEXT) -> str | None:
        """Prose (a message, a title, a stage): one over `limit` is cut to it."""
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.ignore(key)
            return None
        if len(value) > limit:
            self.ignore(key)
            value = value[:limit]
        return self._storable(key, value)

    def token(self, key: str, limit: int = MAX_ID) -> str | None:
        """A code, URL, file or model name: one over `limit` is left out, because a cut one
        would name something else."""
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > limit:
            self.ignore(key)
            return None
        return self._storable(key, value)

    def identifier(self, key: str) -> str | None:
        """An id of something else (a project, a user); numeric ones are read as text."""
        value = self.data.get(key)
        return str(value) if _numeric_id(value) else self.token(key)

    def _storable(self, key: str, value: str) -> str | None:
        if _SURROGATE.search(value):
            self.ignore(key)
            return None
        return value

    def number(self, key: str, *, low: float = -math.inf, high: float = math.inf,
               clamp: bool = False) -> float | None:
        """A finite number in [low, high]; out of range it is clamped into it, or left out."""
        result = self._finite(key)
        if result is None or low <= result <= high:
            return result
        self.ignore(key)
        return min(max(result, low), high) if clamp else None

    def _finite(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.ignore(key)
            return None
        try:
            result = float(value)  # an integer of 400 digits does not fit a float
        except OverflowError:
            result = math.inf
        if not math.isfinite(result):
            self.ignore(key)
            return None
        return result

    def integer(self, key: str, *, low: int = 0) -> int | None:
        """A whole number of at least `low` (4.0 counts as 4), else left out."""
        result = self._finite(key)
        if result is None:
            return None
        if not result.is_integer() or result < low:
            self.ignore(key)
            return None
        return int(result)

    def boolean(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is None or isinstance(value, bool):
            return value
        self.ignore(key)
        return None

    def timestamp(self, key: str) -> str | None:
        """An ISO 8601 date-time, served the relay's way (UTC, `...T03:04:05.678Z`) so every
        timestamp of a job has one format; one without an offset is taken as UTC."""
        value = self.token(key, MAX_TIMESTAMP)
        if not value:
            return None
        try:
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return isoformat(moment)
        except (ValueError, OverflowError):
            self.ignore(key)
            return None

    def child(self, key: str) -> Reader | None:
        """A nested object, read with its fields named by path (`error.code`)."""
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.ignore(key)
            return None
        return Reader(value, self.name(key), self.ignored)

    def json(self, key: str) -> Any:
        """Any JSON value kept as given (a result object), if it fits the caps of depth,
        items and string length and can be served as JSON again; else it is left out."""
        value = self.data.get(key)
        if value is None or fits(value):
            return value
        self.ignore(key)
        return None


def fits(value: Any, depth: int = 0) -> bool:
    """Whether a JSON value is within the caps and servable (finite numbers, valid text)."""
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, str):
        return _fits_string(value)
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict | list):
        return _fits_container(value, depth)
    return True


def _fits_container(value: dict[Any, Any] | list[Any], depth: int) -> bool:
    if len(value) > MAX_ITEMS:
        return False
    children: Iterable[Any] = value
    if isinstance(value, dict):
        if not all(_fits_string(key) for key in value):
            return False
        children = value.values()
    return all(fits(child, depth + 1) for child in children)


def _fits_string(value: object) -> bool:
    return (isinstance(value, str) and len(value) <= MAX_URL
            and _SURROGATE.search(value) is None)


def compact(**values: Any) -> dict[str, Any]:
    """The given values without the Nones; an empty dict when all are None."""
    return {key: value for key, value in values.items() if value is not None}


def error(code: str, message: str) -> dict[str, Any]:
    """An error in the job model's shape; `fix` and `retryable` stay null until a
    catalog (or the provider) knows them."""
    return {"code": code, "message": message, "fix": None, "retryable": None}
