"""Following the store's log as it grows: the one loop the hub, the poll scheduler and the
outbound service each read it with.

    follow(store, cursor) ──► [events] ──► [events] ──► []  ──► Gap(cursor) ──► [events] …
                               a page       a page      waited   the log moved    from the
                               (in order)               `wait`   on without us    newest on

It yields each page of new events in order; an empty page when it waited (up to `wait()`
seconds) and none came, so a consumer with work of its own between pages gets its turn; and a
`Gap` when the events after its cursor can no longer all be read: older than the store keeps,
or the store was reset under it. What a gap means is the consumer's business (the hub ends its
streams, which resume on their own; the scheduler rebuilds its schedule from the jobs); the
follower goes on from the newest event. A store that fails is retried after RETRY seconds,
logged once per failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from relay.errors import CursorError, StoreError
from relay.models import Event
from relay.store import Store

logger = logging.getLogger(__name__)

PAGE = 500
WAIT = 30.0
RETRY = 1.0


@dataclass(frozen=True, slots=True)
class Gap:
    """The events between the follower's cursor and `cursor` are not all readable; it goes
    on from `cursor` (None: the log is empty)."""

    reason: CursorError
    cursor: str | None


async def follow(store: Store, cursor: str | None, *, page: int = PAGE,
                 wait: Callable[[], float] = lambda: WAIT
                 ) -> AsyncIterator[list[Event] | Gap]:
    """The log after `cursor`, page by page, forever (see the module's docstring)."""
    while True:
        try:
            events = await store.read_since(cursor, limit=page)
            if not events:
                await store.wait(cursor, timeout=wait())
                events = await store.read_since(cursor, limit=page)
        except CursorError as exc:
            lost = exc
        except StoreError:
            await _pause()
            continue
        else:
            if events:
                cursor = events[-1].cursor
            yield events
            continue
        try:
            cursor = await store.last_cursor()
        except StoreError:
            await _pause()
            continue
        yield Gap(lost, cursor)


async def _pause() -> None:
    logger.exception("could not read the store's log; retrying in %g s", RETRY)
    await asyncio.sleep(RETRY)
