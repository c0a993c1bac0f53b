"""The Redis backend (`redis://host:port/db?prefix=relay&retention=1000000`), for several
relay instances sharing one Redis.

The event log is a Redis Stream: its entry ids are the cursors, and `XREAD BLOCK` is how the
hub waits. A write reads the job, runs the caller's pure `change` here, then commits with one
Lua script that checks the job's version is still the one read (compare-and-set), appends the
event and updates the job and its indexes atomically. Another instance's write in between makes
the script answer "conflict", and the apply starts over. The stream is trimmed to about
`retention` entries; a cursor older than what is kept raises `CursorExpired`.

Keys, under the prefix: `events` (stream), `job:<id>` (hash: v version, c cursor, j job,
s source, r received_at), `key:<provider>:<external_id>` (id), `jobs` (sorted set, tracking
order), `seq` (counter), `topic:<topic>` and `state:<state>` (sets of ids), `history:<id>`
(list of cursors), `dedupe:<key>`, `secret:<name>`,
`lease:<name>` (its owner, with a TTL), and the outbox's (relay.store.redis_outbox). Keys span
slots: one Redis, not a cluster.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from redis.exceptions import RedisError

from relay.errors import CursorExpired, StoreError, UnknownCursor
from relay.models import TERMINAL, Event, Job, Source, State
from relay.store import Applied, Change, JobQuery, Store
from relay.store.health import WriteHealth
from relay.store.redis.client import Connection, translated
from relay.store.redis.leases import RedisLeases
from relay.store.redis.outbox import ENQUEUE_LUA, RedisOutbox, kinds_arg

MAX_ATTEMPTS = 100
MAX_BLOCK = 5.0  # seconds; below the client's socket timeout, so a blocking read never trips it
DEDUPE_SECONDS = 7 * 86400
SCAN_CAP = 20_000
_CURSOR = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")  # ASCII: \d would take "²" too

# KEYS: events, job hash, key index, history, jobs zset, seq, dedupe key ('' for none)
# ARGV: expected version (-1: absent), job json ('' for no change), job id, source,
#       received_at, retention, new version, old state, new state, old topics, new topics,
#       prefix, dedupe ttl, external id, the event's kinds (relay.store.redis.outbox.kinds_arg)
# enqueue (ENQUEUE_LUA) adds the event's outbound deliveries in the same step.
_APPLY = ENQUEUE_LUA + """
if KEYS[7] ~= '' and redis.call('EXISTS', KEYS[7]) == 1 then return {'duplicate'} end
local expected = tonumber(ARGV[1])
if expected < 0 then
  if redis.call('EXISTS', KEYS[3]) == 1 then return {'conflict'} end
elseif tonumber(redis.call('HGET', KEYS[2], 'v')) ~= expected then
  return {'conflict'}
end
if KEYS[7] ~= '' then redis.call('SET', KEYS[7], '1', 'EX', ARGV[13]) end
if ARGV[2] == '' then return {'unchanged'} end
local id = ARGV[3]
local cursor = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[6], '*',
  'j', ARGV[2], 's', ARGV[4], 'r', ARGV[5])
redis.call('HSET', KEYS[2], 'v', ARGV[7], 'c', cursor, 'j', ARGV[2], 's', ARGV[4], 'r', ARGV[5])
redis.call('RPUSH', KEYS[4], cursor)
if expected < 0 then
  redis.call('SET', KEYS[3], id)
  redis.call('ZADD', KEYS[5], redis.call('INCR', KEYS[6]), id)
  redis.call('SADD', ARGV[12] .. 'ext:' .. ARGV[14], id)
end
if ARGV[8] ~= ARGV[9] then
  if ARGV[8] ~= '' then redis.call('SREM', ARGV[12] .. 'state:' .. ARGV[8], id) end
  redis.call('SADD', ARGV[12] .. 'state:' .. ARGV[9], id)
end
if ARGV[10] ~= ARGV[11] then
  for _, topic in ipairs(cjson.decode(ARGV[10])) do
    redis.call('SREM', ARGV[12] .. 'topic:' .. topic, id)
  end
  for _, topic in ipairs(cjson.decode(ARGV[11])) do
    redis.call('SADD', ARGV[12] .. 'topic:' .. topic, id)
  end
end
enqueue(ARGV[12], id, cursor, ARGV[2], ARGV[4], ARGV[5], ARGV[11], ARGV[15])
return {'applied', cursor}
"""


class RedisStore(Store):
    """The outbox's deliveries are added by the apply script with their events."""

    def __init__(self, url: str, prefix: str = "relay", retention: int = 1_000_000) -> None:
        self.url = url
        self.retention = retention
        self.connection = Connection(url, prefix)
        self.prefix = self.connection.prefix
        self.redis: Any = self.connection.redis
        self.outbox = RedisOutbox(self.connection)
        self.leases = RedisLeases(self.connection)
        self.health = WriteHealth(f"Redis {prefix}")
        self._apply_script = self.redis.register_script(_APPLY)

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """Relay's own options (`prefix`, `retention`) ride in the query string."""
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        prefix = query.pop("prefix", ["relay"])[0]
        retention = query.pop("retention", ["1000000"])[0]
        if not retention.isdigit() or int(retention) < 1:
            raise StoreError(f"retention: expected a positive whole number in {url!r}")
        plain = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        return cls(plain, prefix=prefix, retention=int(retention))

    def _key(self, *parts: str) -> str:
        return self.connection.key(*parts)

    async def open(self) -> None:
        await self.ping()  # an unreachable Redis fails startup, not the first request

    async def close(self) -> None:
        await self.connection.aclose()

    async def ping(self) -> None:
        """Redis answers, and writes: after a failed write (out of memory under noeviction,
        a read-only replica, a user without write permission) a small write is tried, so
        readiness comes back once writes work again."""
        async with translated():
            await self.redis.ping()
        if self.health.failure is None:
            return
        try:
            async with translated():
                await self.redis.set(self._key("ping"), "1", ex=60)
        except StoreError as exc:
            self.health.failed(exc)
            raise
        self.health.succeeded()

    # -- writes ---------------------------------------------------------------------------

    async def apply(self, provider: str, external_id: str, change: Change, *,
                    source: Source, received_at: str, dedupe_key: str | None = None) -> Applied:
        async with translated():
            for _ in range(MAX_ATTEMPTS):
                current = await self.find(provider, external_id)
                dedupe = self._key("dedupe", dedupe_key) if dedupe_key is not None else ""
                if dedupe and await self.redis.exists(dedupe):
                    return Applied(current, None, duplicate=True)
                new = change(current)
                outcome = await self._commit(provider, external_id, current, new, source,
                                             received_at, dedupe)
                if outcome[0] == "duplicate":
                    return Applied(current, None, duplicate=True)
                if outcome[0] == "unchanged":
                    return Applied(current, None)
                if outcome[0] == "applied":
                    assert new is not None
                    return Applied(new, Event(outcome[1], new, source, received_at))
        raise StoreError(f"gave up applying to {provider}/{external_id}: too much contention")

    async def _commit(self, provider: str, external_id: str, current: Job | None,
                      new: Job | None, source: Source, received_at: str, dedupe: str
                      ) -> list[str]:
        job = new or current
        job_id = job.id if job is not None else ""
        keys = [self._key("events"), self._key("job", job_id),
                self._key("key", provider, external_id), self._key("history", job_id),
                self._key("jobs"), self._key("seq"), dedupe]
        args: list[str | int] = [
            current.version if current is not None else -1,
            json.dumps(new.to_dict(), separators=(",", ":")) if new is not None else "",
            job_id, source.value, received_at, self.retention,
            new.version if new is not None else 0,
            current.state.value if current is not None else "",
            new.state.value if new is not None else "",
            json.dumps(list(current.topics)) if current is not None else "[]",
            json.dumps(list(new.topics)) if new is not None else "[]",
            self.prefix, DEDUPE_SECONDS, external_id, kinds_arg(current, new),
        ]
        try:
            result: list[str] = await self._apply_script(keys=keys, args=args)
        except RedisError as exc:
            self.health.failed(exc)
            raise
        self.health.succeeded()
        return result

    async def secret(self, name: str, generate: Callable[[], str]) -> str:
        async with translated():
            key = self._key("secret", name)
            await self.redis.set(key, generate(), nx=True)
            return str(await self.redis.get(key))

    # -- reads ----------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        async with translated():
            body = await self.redis.hget(self._key("job", job_id), "j")
        return Job.from_dict(json.loads(body)) if body else None

    async def find(self, provider: str, external_id: str) -> Job | None:
        async with translated():
            job_id = await self.redis.get(self._key("key", provider, external_id))
        return await self.get(job_id) if job_id else None

    async def list_jobs(self, query: JobQuery) -> tuple[list[Job], int]:
        async with translated():
            ids = await self._filtered_ids(query)
            if ids is None:
                total = await self.redis.zcard(self._key("jobs"))
                page = await self.redis.zrevrange(self._key("jobs"), query.offset,
                                                  query.offset + query.limit - 1)
            else:
                ordered = await self._newest_first(ids)
                total, page = len(ordered), ordered[query.offset:query.offset + query.limit]
            return await self._jobs(page), total

    async def _filtered_ids(self, query: JobQuery) -> set[str] | None:
        """The ids passing every filter of `query`, or None when it has none."""
        keys = [self._key("topic", t) for t in (
            f"provider:{query.provider}" if query.provider else None, query.topic) if t]
        if query.state is not None:
            keys.append(self._key("state", query.state))
        if query.external_id is not None:
            keys.append(self._key("ext", query.external_id))
        sets = [set(await self.redis.smembers(key)) for key in keys]
        if query.terminal is not None:
            states = TERMINAL if query.terminal else set(State) - TERMINAL
            sets.append(set(await self.redis.sunion([self._key("state", s) for s in states])))
        return set.intersection(*sets) if sets else None

    async def _newest_first(self, ids: Collection[str]) -> list[str]:
        if not ids:
            return []
        ordered = list(ids)
        scores = await self.redis.zmscore(self._key("jobs"), ordered)
        ranked = sorted(zip(scores, ordered, strict=True), key=lambda p: p[0] or 0, reverse=True)
        return [job_id for _, job_id in ranked]

    async def _jobs(self, ids: Sequence[str]) -> list[Job]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(self._key("job", job_id), "j")
            bodies = await pipe.execute()
        return [Job.from_dict(json.loads(body)) for body in bodies if body]

    async def latest(self, topics: Collection[str], limit: int = 100) -> list[Event]:
        async with translated():
            ids = await self.redis.sunion([self._key("topic", t) for t in topics])
            newest = (await self._newest_first(ids))[:limit]
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in newest:
                    pipe.hmget(self._key("job", job_id), ["c", "j", "s", "r"])
                rows = await pipe.execute()
        events = [_event(c, {"j": j, "s": s, "r": r}) for c, j, s, r in rows if c]
        return sorted(events, key=lambda e: _order(e.cursor))

    async def history(self, job_id: str, limit: int = 1000) -> list[Event]:
        async with translated():
            cursors = await self.redis.lrange(self._key("history", job_id), 0, limit - 1)
            async with self.redis.pipeline(transaction=False) as pipe:
                for cursor in cursors:
                    pipe.xrange(self._key("events"), cursor, cursor)
                found = await pipe.execute()
        return [_event(entries[0][0], entries[0][1]) for entries in found if entries]

    async def read_since(self, cursor: str | None, *, topics: Collection[str] | None = None,
                         limit: int = 500) -> list[Event]:
        async with translated():
            start = await self._start(cursor)
            wanted = None if topics is None else frozenset(topics)
            found: list[Event] = []
            async for event in self._scan(start):
                if wanted is None or not wanted.isdisjoint(event.job.topics):
                    found.append(event)
                    if len(found) == limit:
                        break
            return found

    async def _scan(self, start: str) -> AsyncIterator[Event]:
        """Events after `start`, in pages, at most SCAN_CAP of them per call."""
        scanned = 0
        while scanned < SCAN_CAP:
            entries = await self.redis.xrange(self._key("events"), f"({start}", "+", count=500)
            for cursor, fields in entries:
                yield _event(cursor, fields)
            scanned += len(entries)
            if len(entries) < 500:
                return
            start = entries[-1][0]

    async def _start(self, cursor: str | None) -> str:
        if cursor is None:
            return "0-0"
        if not _CURSOR.fullmatch(cursor):
            raise UnknownCursor(cursor)
        info = await self._stream_info()
        if info is None or _order(cursor) > _order(info["last-generated-id"]):
            raise UnknownCursor(cursor)
        if _trimmed_after(cursor, info):
            raise CursorExpired(cursor)
        return cursor

    async def _stream_info(self) -> dict[str, Any] | None:
        try:
            info: dict[str, Any] = await self.redis.xinfo_stream(self._key("events"))
        except RedisError as exc:
            if "no such key" in str(exc).lower():
                return None
            raise
        return info

    async def last_cursor(self) -> str | None:
        async with translated():
            entries = await self.redis.xrevrange(self._key("events"), "+", "-", count=1)
        return str(entries[0][0]) if entries else None

    async def wait(self, cursor: str | None, timeout: float) -> None:
        block = max(1, int(min(timeout, MAX_BLOCK) * 1000))
        async with translated():
            await self.redis.xread({self._key("events"): cursor or "0-0"}, count=1, block=block)


def _event(cursor: str, fields: dict[str, str]) -> Event:
    return Event(cursor, Job.from_dict(json.loads(fields["j"])), Source(fields["s"]), fields["r"])


def _trimmed_after(cursor: str, info: dict[str, Any]) -> bool:
    """Whether events after `cursor` were trimmed away. Trimming removes the oldest entries,
    so that is when some were trimmed and the cursor is older than the first one kept (a
    cursor naming exactly the last trimmed entry is reported too: it cannot be told apart)."""
    trimmed = int(info.get("entries-added", 0)) > int(info.get("length", 0))
    first = info.get("recorded-first-entry-id") or "0-0"
    return trimmed and _order(cursor) < _order(first)


def _order(cursor: str) -> tuple[int, int]:
    ms, _, seq = cursor.partition("-")
    return int(ms), int(seq or 0)

