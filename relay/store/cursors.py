"""Cursors: a position in a store's log, stamped with the epoch of the store that gave it.

    <epoch>.<position>      5f0c2a9e.42 (SQLite, memory: the event's number)
                            5f0c2a9e.1733491200000-0 (Redis: the Stream entry's id)

The epoch is random and made with the store's data (kept by `Store.secret`: a SQLite file,
a key under the Redis prefix, a memory store's own instance), so a cursor from an earlier
incarnation of the store (a new `relay.db`, a flushed Redis, a memory store after a restart)
never names a position in the new log: it is unknown, and a subscriber resuming from it gets
`relay.reset` rather than a replay that silently skips or repeats events. The same goes for
the `webhook-id` of outbound deliveries, which is the event's cursor. Only the backend reads
the position; `order` only compares two.
"""

from __future__ import annotations

import re
import secrets

from relay.errors import UnknownCursor

EPOCH = "cursor_epoch"
"""The name the epoch is kept under with `Store.secret`."""

_NUMBER = re.compile(r"[0-9]{1,19}")  # ASCII digits: str.isdigit() also takes "²"


def order(cursor: str) -> tuple[int, int]:
    """Where a cursor the store gave, or its position, falls in its log: those of one epoch
    compare in the log's order as these (a position is a number, or Redis's two joined by
    "-")."""
    first, _, second = cursor.rpartition(".")[2].partition("-")
    return int(first), int(second or 0)


def new_epoch() -> str:
    return secrets.token_hex(4)


class Cursors:
    """Turns a backend's positions into cursors and back, for the epoch the store holds.
    One instance per store, shared with its outbox; `adopt` sets the epoch once it is read
    from the store (and again should the store be found reset under a running relay)."""

    def __init__(self, epoch: str = "") -> None:
        self.epoch = ""
        self._prefix = "."
        self.adopt(epoch)

    def adopt(self, epoch: str) -> None:
        self.epoch = epoch
        self._prefix = f"{epoch}."

    def cursor(self, position: int | str) -> str:
        return f"{self._prefix}{position}"

    def position(self, cursor: str) -> str:
        """The position a cursor of this epoch names; UnknownCursor for any other string."""
        if not cursor.startswith(self._prefix):
            raise UnknownCursor(cursor)
        return cursor[len(self._prefix):]

    def number(self, cursor: str) -> int:
        """The position of a backend that numbers its events (SQLite, memory)."""
        position = self.position(cursor)
        if not _NUMBER.fullmatch(position):
            raise UnknownCursor(cursor)
        return int(position)
