"""Request ids: unique within a process's life and across processes, without a system call
per request (a random prefix per process, then a counter)."""

from __future__ import annotations

import itertools
import secrets

_PREFIX = secrets.token_hex(4)
_COUNT = itertools.count(1)


def request_id() -> str:
    return f"{_PREFIX}{next(_COUNT):08x}"
