"""The SQLite backend's outbox (relay.store.outbox).

Deliveries are rows added by the writer in the transaction that appends their event
(`Enqueuer`, used by the writer's batch), so a delivery is durable exactly when its event is.
A delivery's payload is its event's row (`seq`): nothing is copied. Everything else goes through
the writer connection too, on its thread, each call in one transaction; the outbound worker
batches its outcomes, so recording them costs a commit per batch, not per delivery.

The head of a (subscription, job) queue is its pending row with no older pending row.

A subscription's health is columns of its row (`status`, `failures`, ...); `enabled` mirrors
"not disabled", for the writer's filter. Databases from before them get them at open
(`upgrade_outbox`), a subscription that was disabled staying disabled.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Collection, Sequence
from typing import Any

from relay.models import Event, Job, Source
from relay.store.cursors import Cursors
from relay.store.outbox import (
    KEEP_FINISHED,
    MAX_ATTEMPTS_KEPT,
    REPLAY_MAX,
    REPLAY_SCAN,
    Attempt,
    Delivery,
    DeliveryStatus,
    Due,
    EventKind,
    Health,
    HealthChange,
    OutboxStats,
    Outcome,
    Replayed,
    Retried,
    Subscription,
    SubscriptionStatus,
    event_kinds,
    replay_choice,
    replayable,
    wants,
    wants_events,
)
from relay.store.sqlite.database import Database

OUTBOX_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    topics TEXT NOT NULL,
    secret TEXT NOT NULL,
    origin TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    disabled_reason TEXT,
    created_at TEXT NOT NULL,
    events TEXT,
    name TEXT,
    status TEXT NOT NULL DEFAULT 'active',
    failures INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    status_since REAL NOT NULL DEFAULT 0,
    probes INTEGER NOT NULL DEFAULT 0,
    probe_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS deliveries (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    next_at REAL NOT NULL,
    tries INTEGER NOT NULL DEFAULT 0,
    since REAL NOT NULL,
    attempts TEXT NOT NULL DEFAULT '[]',
    superseded_by INTEGER,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (subscription_id, next_at)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_job ON deliveries (subscription_id, job_id, n);
CREATE INDEX IF NOT EXISTS deliveries_sub ON deliveries (subscription_id, n);
DELETE FROM deliveries WHERE status != 'pending' AND created_at < unixepoch() - {KEEP_FINISHED};
"""
"""The outbox's tables, created (and finished deliveries pruned) when the store opens."""

_COLUMNS = ("d.n, d.subscription_id, d.status, d.created_at, d.next_at, d.tries, d.since,"
            " d.attempts, d.superseded_by, d.reason, e.seq, e.source, e.received_at, e.job")
_FROM = "FROM deliveries d JOIN events e ON e.seq = d.seq"
_HEAD = ("NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.subscription_id = d.subscription_id"
         " AND o.job_id = d.job_id AND o.status = 'pending' AND o.n < d.n)")
_HEALTH = "status, failures, last_error, status_since, probes, probe_at, disabled_reason"
_SUBSCRIPTION = (f"SELECT id, url, topics, secret, origin, created_at, events, name, {_HEALTH}"
                 " FROM subscriptions")
_ADDED_COLUMNS = {"events": "TEXT", "name": "TEXT",
                  "status": "TEXT NOT NULL DEFAULT 'active'",
                  "failures": "INTEGER NOT NULL DEFAULT 0", "last_error": "TEXT",
                  "status_since": "REAL NOT NULL DEFAULT 0",
                  "probes": "INTEGER NOT NULL DEFAULT 0", "probe_at": "REAL NOT NULL DEFAULT 0"}


def upgrade_outbox(conn: sqlite3.Connection) -> None:
    """Add the columns a database made before them lacks (after OUTBOX_SCHEMA ran)."""
    known = {row[1] for row in conn.execute("PRAGMA table_info(subscriptions)")}
    for column, kind in _ADDED_COLUMNS.items():
        if column not in known:
            conn.execute(f"ALTER TABLE subscriptions ADD COLUMN {column} {kind}")
    if "status" not in known:
        conn.execute("UPDATE subscriptions SET status = 'disabled' WHERE enabled = 0")


class Enqueuer:
    """The deliveries of one write transaction: a pending row per enabled subscription that
    wants each new event. The subscriptions are read once, inside the transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.now = time.time()
        self.rows: list[tuple[str, str, int, float, float, float]] = []
        self._subscriptions: list[tuple[str, list[str], list[str] | None]] | None = None

    def add(self, seq: int, job: Job, previous: Job | None) -> None:
        subscribed = self._subscribed()
        if not subscribed:
            return
        kinds = event_kinds(previous, job)
        for subscription_id, topics, events in subscribed:
            if wants(topics, job.topics) and wants_events(events, kinds):
                self.rows.append((subscription_id, job.id, seq, self.now, self.now, self.now))

    def _subscribed(self) -> list[tuple[str, list[str], list[str] | None]]:
        if self._subscriptions is None:
            rows = self.conn.execute(
                "SELECT id, topics, events FROM subscriptions WHERE enabled = 1")
            self._subscriptions = [(row[0], json.loads(row[1]), _events_list(row[2]))
                                   for row in rows]
        return self._subscriptions

    def flush(self) -> None:
        if self.rows:
            self.conn.executemany(
                "INSERT INTO deliveries (subscription_id, job_id, seq, status, created_at,"
                " next_at, since) VALUES (?, ?, ?, 'pending', ?, ?, ?)", self.rows)


class SQLiteOutbox:
    """The `Outbox` of `SQLiteStore`, on the store's connections."""

    def __init__(self, db: Database, cursors: Cursors) -> None:
        self._db = db
        self._cursors = cursors

    # -- subscriptions --------------------------------------------------------------------

    async def save_subscription(self, subscription: Subscription) -> None:
        s, h = subscription, subscription.health
        await self._db.transaction(lambda conn: conn.execute(
            "INSERT INTO subscriptions (id, url, topics, secret, origin, created_at, events,"
            f" name, enabled, {_HEALTH}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET url = excluded.url, topics = excluded.topics,"
            " secret = excluded.secret, origin = excluded.origin, events = excluded.events,"
            " name = excluded.name",
            (s.id, s.url, json.dumps(list(s.topics)), s.secret, s.origin, s.created_at,
             _events_json(s.events), s.name, int(s.enabled), *_health_row(h))))

    async def subscriptions(self) -> list[Subscription]:
        rows = await self._db.read(lambda c: c.execute(
            f"{_SUBSCRIPTION} ORDER BY created_at, id").fetchall())
        return [_subscription(row) for row in rows]

    async def subscription(self, subscription_id: str) -> Subscription | None:
        row = await self._db.read(lambda c: c.execute(
            f"{_SUBSCRIPTION} WHERE id = ?", (subscription_id,)).fetchone())
        return _subscription(row) if row else None

    async def delete_subscription(self, subscription_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM deliveries WHERE subscription_id = ?", (subscription_id,))
            return conn.execute("DELETE FROM subscriptions WHERE id = ?",
                                (subscription_id,)).rowcount > 0

        return await self._db.transaction(delete)

    async def update_health(self, subscription_id: str, change: HealthChange
                            ) -> tuple[Health, Health] | None:
        return await self._db.transaction(_update_health, subscription_id, change)

    # -- deliveries -----------------------------------------------------------------------

    async def due(self, subscription_id: str, now: float, limit: int,
                  exclude: Collection[str] = ()) -> Due:
        skip = [n for n in map(_number, exclude) if n is not None]

        def run(conn: sqlite3.Connection) -> Due:
            rows = conn.execute(
                f"SELECT {_COLUMNS} {_FROM} WHERE d.subscription_id = ? AND d.status = 'pending'"
                f" AND d.next_at <= ? AND {_HEAD} AND d.n NOT IN ({', '.join('?' * len(skip))})"
                " ORDER BY d.next_at, d.n LIMIT ?",
                (subscription_id, now, *skip, limit)).fetchall()
            later = conn.execute(
                "SELECT min(next_at) FROM deliveries WHERE subscription_id = ?"
                " AND status = 'pending' AND next_at > ?", (subscription_id, now)).fetchone()[0]
            return Due([_delivery(row, self._cursors) for row in rows], later)

        return await self._db.read(run)

    async def finish(self, outcomes: Sequence[Outcome]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            for outcome in outcomes:
                _finish(conn, outcome)

        if outcomes:
            await self._db.transaction(run)

    async def deliveries(self, subscription_id: str, limit: int = 100,
                         status: DeliveryStatus | None = None) -> list[Delivery]:
        where, params = "d.subscription_id = ?", [subscription_id]
        if status is not None:
            where, params = where + " AND d.status = ?", [*params, status.value]
        rows = await self._db.read(lambda c: c.execute(
            f"SELECT {_COLUMNS} {_FROM} WHERE {where} ORDER BY d.n DESC LIMIT ?",
            [*params, limit]).fetchall())
        return [_delivery(row, self._cursors) for row in rows]

    async def delivery(self, delivery_id: str) -> Delivery | None:
        n = _number(delivery_id)
        row = None if n is None else await self._db.read(lambda c: c.execute(
            f"SELECT {_COLUMNS} {_FROM} WHERE d.n = ?", (n,)).fetchone())
        return _delivery(row, self._cursors) if row else None

    async def retry_delivery(self, delivery_id: str, now: float) -> Retried:
        n = _number(delivery_id)
        if n is None:
            return Retried.MISSING
        return await self._db.transaction(_retry, n, now)

    async def replay(self, subscription_id: str, since: float, now: float, *,
                     only_failed: bool = False, limit: int = REPLAY_MAX) -> Replayed:
        # Looked for on a reader (a long look must not hold up the writer), then written
        # in one transaction that checks each again.
        rows = await self._db.read(lambda c: c.execute(
            "SELECT n, job_id, status, created_at FROM deliveries WHERE subscription_id = ?"
            " AND created_at >= ? ORDER BY n DESC LIMIT ?",
            (subscription_id, since, REPLAY_SCAN + 1)).fetchall())
        chosen, truncated = replay_choice(
            ((str(n), job, DeliveryStatus(status), at) for n, job, status, at in rows),
            since, only_failed, limit)
        count = await self._db.transaction(_replay, subscription_id, [int(n) for n in chosen],
                                           only_failed, now)
        return Replayed(count, truncated)

    async def outbox_stats(self) -> OutboxStats:
        row = await self._db.read(lambda c: c.execute(
            "SELECT count(*), min(created_at) FROM deliveries WHERE status = 'pending'"
        ).fetchone())
        return OutboxStats(int(row[0]), row[1])


# -- in the writer's transaction ---------------------------------------------------------------

def _finish(conn: sqlite3.Connection, outcome: Outcome) -> None:
    n = _number(outcome.delivery_id)
    row = None if n is None else conn.execute(
        "SELECT subscription_id, job_id, tries, since, attempts FROM deliveries"
        " WHERE n = ? AND status = 'pending'", (n,)).fetchone()
    if n is None or row is None:
        return
    subscription_id, job_id, tries, since, kept = row
    attempts = [*json.loads(kept), outcome.attempt.to_dict()][-MAX_ATTEMPTS_KEPT:]
    conn.execute("UPDATE deliveries SET attempts = ?, tries = ? WHERE n = ?",
                 (json.dumps(attempts), tries + 1, n))
    if outcome.status is not DeliveryStatus.PENDING:
        conn.execute("UPDATE deliveries SET status = ?, reason = ? WHERE n = ?",
                     (outcome.status.value, outcome.reason, n))
        return
    queue = [n, *(r[0] for r in conn.execute(
        "SELECT n FROM deliveries WHERE subscription_id = ? AND job_id = ?"
        " AND status = 'pending' AND n > ? ORDER BY n", (subscription_id, job_id, n)))]
    head = queue[-1]  # the newest takes over the retry, with the full job as of its event
    conn.executemany("UPDATE deliveries SET status = 'superseded', superseded_by = ? WHERE n = ?",
                     [(head, older) for older in queue[:-1]])
    conn.execute("UPDATE deliveries SET tries = ?, since = ?, next_at = ? WHERE n = ?",
                 (tries + 1, since, outcome.next_at, head))


def _update_health(conn: sqlite3.Connection, subscription_id: str, change: HealthChange
                   ) -> tuple[Health, Health] | None:
    row = conn.execute(f"SELECT {_HEALTH} FROM subscriptions WHERE id = ?",
                       (subscription_id,)).fetchone()
    if row is None:
        return None
    before = _health(row)
    after = change(before)
    disabled = after.status is SubscriptionStatus.DISABLED
    conn.execute(f"UPDATE subscriptions SET enabled = ?, ({_HEALTH}) ="
                 " (?, ?, ?, ?, ?, ?, ?) WHERE id = ?",
                 (int(not disabled), *_health_row(after), subscription_id))
    if disabled and before.status is not SubscriptionStatus.DISABLED:
        conn.execute("UPDATE deliveries SET status = 'failed', reason = ?"
                     " WHERE subscription_id = ? AND status = 'pending'",
                     (after.disabled_reason or "disabled", subscription_id))
    return before, after


def _replay(conn: sqlite3.Connection, subscription_id: str, chosen: list[int],
            only_failed: bool, now: float) -> int:
    enabled = conn.execute("SELECT enabled FROM subscriptions WHERE id = ?",
                           (subscription_id,)).fetchone()
    if enabled is None or not enabled[0]:
        return 0
    count = 0
    for n in chosen:
        row = conn.execute(
            "SELECT job_id, seq, status FROM deliveries d WHERE n = ? AND NOT EXISTS (SELECT 1"
            " FROM deliveries o WHERE o.subscription_id = d.subscription_id"
            " AND o.job_id = d.job_id AND o.n > d.n)", (n,)).fetchone()
        if row is None or not replayable(DeliveryStatus(row[2]), only_failed):
            continue  # meanwhile a newer one was made, or this one is pending again
        # A microsecond apart, so the due order is the event order in every backend.
        due = now + count * 1e-6
        conn.execute("INSERT INTO deliveries (subscription_id, job_id, seq, status, created_at,"
                     " next_at, since) VALUES (?, ?, ?, 'pending', ?, ?, ?)",
                     (subscription_id, row[0], row[1], now, due, now))
        count += 1
    return count


def _retry(conn: sqlite3.Connection, n: int, now: float) -> Retried:
    row = conn.execute("SELECT subscription_id, job_id, status FROM deliveries WHERE n = ?",
                       (n,)).fetchone()
    if row is None:
        return Retried.MISSING
    if row[2] != DeliveryStatus.FAILED:
        return Retried.NOT_FAILED
    newer = conn.execute(
        "SELECT 1 FROM deliveries WHERE subscription_id = ? AND job_id = ? AND n > ?"
        " AND status IN ('pending', 'delivered') LIMIT 1", (row[0], row[1], n)).fetchone()
    if newer is not None:
        return Retried.NEWER
    conn.execute("UPDATE deliveries SET status = 'pending', next_at = ?, tries = 0, since = ?,"
                 " reason = NULL WHERE n = ?", (now, now, n))
    return Retried.RETRIED


# -- rows ----------------------------------------------------------------------------------

def _number(delivery_id: str) -> int | None:
    digits = delivery_id.removeprefix("dlv_")
    if delivery_id == digits or not digits.isascii() or not digits.isdigit() or len(digits) > 18:
        return None
    return int(digits)


def _subscription(row: tuple[Any, ...]) -> Subscription:
    id_, url, topics, secret, origin, created_at, events, name = row[:8]
    listed = _events_list(events)
    return Subscription(id_, url, tuple(json.loads(topics)), secret, origin, created_at,
                        None if listed is None else tuple(EventKind(e) for e in listed), name,
                        _health(row[8:]))


def _health(row: Sequence[Any]) -> Health:
    status, failures, last_error, since, probes, probe_at, reason = row
    return Health(SubscriptionStatus(status), failures, last_error, since, probes, probe_at,
                  reason)


def _health_row(h: Health) -> tuple[Any, ...]:
    return (h.status.value, h.consecutive_failures, h.last_error, h.since, h.probes,
            h.probe_at, h.disabled_reason)


def _events_json(events: Sequence[str] | None) -> str | None:
    return None if events is None else json.dumps(list(events))


def _events_list(value: str | None) -> list[str] | None:
    return None if value is None else list(json.loads(value))


def _delivery(row: tuple[Any, ...], cursors: Cursors) -> Delivery:
    (n, subscription_id, status, created_at, next_at, tries, since, attempts, by, reason,
     seq, source, received_at, job) = row
    event = Event(cursors.cursor(seq), Job.from_json(job), Source(source),
                  received_at)
    tried = tuple(Attempt.from_dict(a) for a in json.loads(attempts))
    return Delivery(f"dlv_{n}", subscription_id, event, DeliveryStatus(status), created_at,
                    next_at, tries, since, tried, f"dlv_{by}" if by is not None else None, reason)
