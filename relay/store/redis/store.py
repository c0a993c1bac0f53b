"""The Redis backend (`redis://host:port/db?prefix=relay&retention=1000000`), for several
relay instances sharing one Redis.

The event log is a Redis Stream: its entry ids are the cursors' positions (relay.store.cursors;
the epoch is the key `secret:cursor_epoch`, made with SET NX, so a flush makes a new one), and
`XREAD BLOCK` is how the hub waits. A write runs the caller's pure `change` here, against the
job as this instance last wrote or read it (none, for a job it has not met), then commits with
one Lua script that checks the job's version is still that one (compare-and-set), appends the
event and updates the job and its indexes atomically. Concurrent writes share one script call.
When the belief was wrong (another instance wrote the job meanwhile, or it existed already),
the script answers "conflict" with the job as it is, and the write is run again against that.
The stream is trimmed to about `retention` entries; a cursor older than what is kept raises
`CursorExpired`, except for the log's own followers, which read on from the instance's tail
(`_Tail`) while it still holds their cursor.

Keys, under the prefix: `events` (stream: j job, s source, r received_at, and the job's head,
which the log's readers mostly need alone: i id, p provider, x external id, t state, v version,
T topics), `job:<id>` (hash: v version, c entry id, j job, s source, r received_at),
`key:<provider>:<external_id>` (id), `jobs` (sorted set, tracking order), `seq` (counter),
`topic:<topic>` and `state:<state>` (sets of ids), `history:<id>` (list of entry ids),
`dedupe:<key>`, `secret:<name>`, `lease:<name>` (its owner, with a TTL), `finished` (sorted
set: terminal jobs by when they finished, for retention; `finished:indexed` once jobs written
before it were added), and the outbox's (relay.store.redis_outbox). Keys span slots: one
Redis, not a cluster.

Retention: `sweep` deletes a batch of finished jobs per script call: the job, its index
entries, its events (XDEL by the entry ids in `history:<id>`, not a trim by age, which would
take the early events of jobs still running too) and its deliveries. Redis records the
newest entry ever deleted from the stream (`max-deleted-entry-id`): a cursor older than it
is expired. Concurrent sweeps of several instances are safe: each step is one script.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from redis.exceptions import NoScriptError, RedisError

from relay.errors import CursorExpired, StoreError, UnknownCursor
from relay.models import TERMINAL, Event, Job, JobHead, Source, State
from relay.runtime.tasks import cancel_all
from relay.store import Applied, Change, JobQuery, Store, finished
from relay.store.cursors import EPOCH, Cursors, new_epoch, order
from relay.store.health import WriteHealth
from relay.store.redis.client import Connection, Dedicated, translated
from relay.store.redis.leases import RedisLeases
from relay.store.redis.outbox import (
    ENQUEUE_LUA,
    SWEEP_DELIVERIES_LUA,
    RedisOutbox,
    kinds_arg,
)

logger = logging.getLogger(__name__)
MAX_ATTEMPTS = 100
MAX_BATCH = 500
READ_BLOCK = 0.25  # seconds the log reader blocks at a time: how long closing waits for it
READ_LINGER = 0.02
"""Seconds the log reader waits after a read that found the log busy (more than one new
event), while this instance has streams open: the next read then takes a page rather than an
event or two, and a busy log's events reach the streams up to this much later. Each read, with
the wake-up of the hub, scheduler and outbound that follows it, costs what taking some fifty
events does. An event alone is read at once."""
IDLE_LINGER = 0.1
"""The same wait while no stream is open here (`hurry(False)`): only the scheduler and
outbound read the log, and a tenth of a second is nothing to them; on a busy log it takes a
third off what reading another instance's events costs."""
PAGE = 1000
MAX_TAIL = 4096
MAX_CACHED = 4096
MAX_BLOCK = 5.0  # seconds; below the client's socket timeout, so a blocking read never trips it
SCAN_CAP = 20_000
_FIELDS = ["j", "s", "r", "i", "p", "x", "t", "v", "T"]  # of an event, as _APPLY writes them
# By value: a dict lookup costs a quarter of calling the enum, for every event read.
_STATES = {state.value: state for state in State}
_SOURCES = {source.value: source for source in Source}
_CURSOR = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")  # ASCII: \d would take "²" too

# ARGV: prefix, retention, dedupe ttl, then ITEM arguments per write:
#   dedupe key ('' none), expected version (-1: absent; ASK: only send the job), job json
#   ('' no change), job id, source, received_at, new version, old state, new state, old topics
#   json, new topics json, provider, external id, the event's kinds (outbox.kinds_arg), when
#   the job finished ('' while it has not: relay.store.finished)
# Each write is checked and applied in order, as its own compare-and-set: a write whose
# job's version is not the one expected answers {'conflict', current job json or ''}, a seen
# dedupe key {'duplicate', current job json or ''}. enqueue (ENQUEUE_LUA) adds an applied
# event's outbound deliveries in the same step.
ITEM = 15
ASK = -2  # an expected version that only asks for the job: answered {'conflict', job}
_APPLY = ENQUEUE_LUA + """
local P, retention, ttl = ARGV[1], ARGV[2], ARGV[3]
local function current(id, key_index)
  if id == '' then id = redis.call('GET', key_index) end
  if not id then return '' end
  return redis.call('HGET', P .. 'job:' .. id, 'j') or ''
end
local function apply(a)
  local dedupe, expected, body, id = a[1], tonumber(a[2]), a[3], a[4]
  local key_index = P .. 'key:' .. a[12] .. ':' .. a[13]
  local job = P .. 'job:' .. id
  if expected == ASK then return {'conflict', current('', key_index)} end
  if dedupe ~= '' and redis.call('EXISTS', P .. 'dedupe:' .. dedupe) == 1 then
    return {'duplicate', current(expected < 0 and '' or id, key_index)}
  end
  if expected < 0 then
    if redis.call('EXISTS', key_index) == 1 then return {'conflict', current('', key_index)} end
  elseif tonumber(redis.call('HGET', job, 'v')) ~= expected then
    return {'conflict', current('', key_index)}
  end
  if dedupe ~= '' then redis.call('SET', P .. 'dedupe:' .. dedupe, '1', 'EX', ttl) end
  if body == '' then return {'unchanged'} end
  -- the fields in the order of _FIELDS
  local cursor = redis.call('XADD', P .. 'events', 'MAXLEN', '~', retention, '*',
    'j', body, 's', a[5], 'r', a[6], 'i', id, 'p', a[12], 'x', a[13], 't', a[9], 'v', a[7],
    'T', a[11])
  redis.call('HSET', job, 'v', a[7], 'c', cursor, 'j', body, 's', a[5], 'r', a[6])
  redis.call('RPUSH', P .. 'history:' .. id, cursor)
  if expected < 0 then
    redis.call('SET', key_index, id)
    redis.call('ZADD', P .. 'jobs', redis.call('INCR', P .. 'seq'), id)
    redis.call('SADD', P .. 'ext:' .. a[13], id)
  end
  if a[8] ~= a[9] then
    if a[8] ~= '' then redis.call('SREM', P .. 'state:' .. a[8], id) end
    redis.call('SADD', P .. 'state:' .. a[9], id)
  end
  if a[10] ~= a[11] then
    for _, topic in ipairs(cjson.decode(a[10])) do
      redis.call('SREM', P .. 'topic:' .. topic, id)
    end
    for _, topic in ipairs(cjson.decode(a[11])) do
      redis.call('SADD', P .. 'topic:' .. topic, id)
    end
  end
  if a[15] ~= '' then redis.call('ZADD', P .. 'finished', a[15], id) end
  enqueue(P, id, cursor, body, a[5], a[6], a[11], a[14])
  return {'applied', cursor}
end
local results = {}
for first = 4, #ARGV, ITEM do
  results[#results + 1] = apply({unpack(ARGV, first, first + ITEM - 1)})
end
return results
""".replace("ITEM", str(ITEM)).replace("ASK", str(ASK))

# ARGV: prefix, finished before (Unix seconds), how many at most. Deletes that many of the
# jobs that finished first, with everything that names them; answers how many.
_SWEEP = SWEEP_DELIVERIES_LUA + """
local P = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', P .. 'finished', '-inf', '(' .. ARGV[2], 'LIMIT', 0,
  tonumber(ARGV[3]))
local subs = redis.call('HKEYS', P .. 'subs')
for _, id in ipairs(ids) do
  local body = redis.call('HGET', P .. 'job:' .. id, 'j')
  if body then
    local job = cjson.decode(body)
    local index = P .. 'key:' .. job.provider .. ':' .. job.external_id
    if redis.call('GET', index) == id then redis.call('DEL', index) end
    redis.call('SREM', P .. 'ext:' .. job.external_id, id)
    redis.call('SREM', P .. 'state:' .. job.state, id)
    for _, topic in ipairs(job.topics) do redis.call('SREM', P .. 'topic:' .. topic, id) end
  end
  chunked('XDEL', P .. 'events', redis.call('LRANGE', P .. 'history:' .. id, 0, -1))
  drop_deliveries(P, id, subs)
  redis.call('DEL', P .. 'job:' .. id, P .. 'history:' .. id)
  redis.call('ZREM', P .. 'jobs', id)
  redis.call('ZREM', P .. 'finished', id)
end
return #ids
"""


class RedisStore(Store):
    """The outbox's deliveries are added by the apply script with their events."""

    def __init__(self, url: str, prefix: str = "relay", retention: int = 1_000_000) -> None:
        self.url = url
        self.retention = retention
        self.connection = Connection(url, prefix)
        self.prefix = self.connection.prefix
        self.redis: Any = self.connection.redis
        self.cursors = Cursors()  # its epoch is read from Redis by `open`
        self.outbox = RedisOutbox(self.connection, self.cursors)
        self.leases = RedisLeases(self.connection)
        self.health = WriteHealth(f"Redis {prefix}")
        self._apply_sha = hashlib.sha1(_APPLY.encode()).hexdigest()
        self._writing = Dedicated(self.connection)  # the writer loop's
        self._sweep_script = self.redis.register_script(_SWEEP)
        self._swept = "0-0"  # the newest event this instance's sweeps deleted
        self._writes: asyncio.Queue[tuple[_Write, asyncio.Future[Applied]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._known = _JobCache()
        self._tail = _Tail()
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # set, and replaced, when the reader adds events
        self._closing = False
        self.linger = IDLE_LINGER  # after a busy read: READ_LINGER while streams are open
        # The events this instance wrote, by entry id, until the reader meets them in the log.
        self._written: dict[str, Event] = {}

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
        self.cursors.adopt(await self.secret(EPOCH, new_epoch))
        await self._index_finished()
        self._tail.start(await self._last_id() or "0-0")
        self._writer = asyncio.create_task(self._write_loop(), name="redis-writer")
        self._reader = asyncio.create_task(self._read_loop(), name="redis-log-reader")

    async def close(self) -> None:
        await _drain(self._writes)
        # The reader is asked to stop, not cancelled: a cancellation landing while redis-py
        # reads a blocking command's answer can leave that read waiting forever.
        self._closing = True
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=4 * READ_BLOCK)
        await cancel_all([task for task in (self._writer, self._reader) if task is not None])
        self._writer = self._reader = None
        await self._writing.close()
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
        if self._writer is None:
            raise StoreError("the store is not open")
        done: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()
        self._writes.put_nowait((_Write(provider, external_id, change, source, received_at,
                                        dedupe_key), done))
        return await done

    async def _write_loop(self) -> None:
        """Every write waiting when the last batch finished goes into the next script call:
        concurrent webhooks share a round trip to Redis, as they share a commit on SQLite."""
        while True:
            batch = [await self._writes.get()]
            while len(batch) < MAX_BATCH and not self._writes.empty():
                batch.append(self._writes.get_nowait())
            try:
                await self._write_batch(batch)
            except Exception as exc:  # whatever went wrong, every caller is answered
                if not isinstance(exc, StoreError):
                    logger.exception("the Redis writer failed")
                    exc = StoreError(f"Redis write failed: {exc!r}")
                self._known.clear()  # what this instance believed may not have been written
                self.health.failed(exc)
                for _, done in batch:
                    _answer(done, exc)

    async def _write_batch(self, batch: list[tuple[_Write, asyncio.Future[Applied]]]) -> None:
        # A job this instance has not seen is taken to be new, as it mostly is (a webhook for
        # a job that is not tracked yet): when it is not, the script's compare-and-set answers
        # with the job, and the write is tried again against it. No read comes first.
        pending = batch
        for _ in range(MAX_ATTEMPTS):
            prepared = [item for write, done in pending if not done.done()
                        and (item := self._prepare(write, done)) is not None]
            if not prepared:
                return
            answers = await self._run([arg for item in prepared for arg in item.args])
            pending = [(item.write, item.done) for item, answer in
                       zip(prepared, answers, strict=True) if not self._settle(item, answer)]
        for _, done in pending:
            _answer(done, StoreError("gave up applying a write: too much contention"))

    def _prepare(self, write: _Write, done: asyncio.Future[Applied]) -> _Prepared | None:
        """The write's script arguments, computed against the job as this instance knows it
        (the script's compare-and-set says when another instance changed it since)."""
        key = (write.provider, write.external_id)
        current = self._known.get(key)
        try:
            new = write.change(current)
        except Exception as exc:  # the caller's pure function failed: its own error, not ours
            if key in self._known:
                _answer(done, exc)
                return None
            # It failed on the guess that the job is new: the script is asked for the job.
            return _Prepared(write, done, None, None, [
                "", ASK, "", "", "", "", 0, "", "", "[]", "[]", write.provider,
                write.external_id, "", ""])
        if new is not None:
            self._known.keep(key, new)  # what later writes of this batch build on
        job = new or current
        args: list[str | int] = [
            write.dedupe_key or "", current.version if current is not None else -1,
            new.to_json() if new is not None else "",
            job.id if job is not None else "", write.source.value, write.received_at,
            new.version if new is not None else 0,
            current.state.value if current is not None else "",
            new.state.value if new is not None else "",
            _topics_json(current.topics) if current is not None else "[]",
            _topics_json(new.topics) if new is not None else "[]",
            write.provider, write.external_id, kinds_arg(current, new), _finished_arg(new)]
        return _Prepared(write, done, current, new, args)

    def _settle(self, item: _Prepared, answer: list[str]) -> bool:
        """Answer the write's caller from the script's answer; False when it must be tried
        again, against the job as the script found it."""
        key, write = (item.write.provider, item.write.external_id), item.write
        if answer[0] == "conflict":
            self._known.keep(key, _job_of(answer[1]))
            return False
        if answer[0] == "applied":
            assert item.new is not None
            event = Event(self.cursors.cursor(answer[1]), item.new, write.source,
                          write.received_at)
            self._written[answer[1]] = event  # the reader need not decode it again
            _answer(item.done, Applied(item.new, event))
        elif answer[0] == "duplicate":
            found = _job_of(answer[1])
            self._known.keep(key, found)
            _answer(item.done, Applied(found, None, duplicate=True))
        else:
            self._known.keep(key, item.current)
            _answer(item.done, Applied(item.current, None))
        return True

    async def _run(self, items: list[str | int]) -> list[list[str]]:
        args = [self.prefix, self.retention, max(1, int(self.dedupe_window)), *items]
        async with translated():
            try:
                answers: list[list[str]] = await self._writing.call(
                    "EVALSHA", self._apply_sha, 0, *args)
            except NoScriptError:  # Redis restarted, or its scripts were flushed
                answers = await self._writing.call("EVAL", _APPLY, 0, *args)
        self.health.succeeded()
        return answers

    async def secret(self, name: str, generate: Callable[[], str]) -> str:
        async with translated():
            key = self._key("secret", name)
            await self.redis.set(key, generate(), nx=True)
            return str(await self.redis.get(key))

    # -- retention ------------------------------------------------------------------------

    async def sweep(self, finished_before: float, limit: int) -> int:
        async with translated():
            deleted = int(await self._sweep_script(args=[self.prefix, repr(finished_before),
                                                         limit]))
            if deleted:
                info = await self._stream_info()
                if info is not None:
                    self._swept = info.get("max-deleted-entry-id") or self._swept
        return deleted

    async def _index_finished(self) -> None:
        """Terminal jobs written before `finished` was kept are added to it, once."""
        done = self._key("finished", "indexed")
        async with translated():
            if await self.redis.exists(done):
                return
            for state in TERMINAL:
                ids = [job_id async for job_id in self.redis.sscan_iter(
                    self._key("state", state.value), count=1000)]
                for start in range(0, len(ids), 1000):
                    jobs = await self._jobs(ids[start:start + 1000])
                    moments = {job.id: finished(job) or 0.0 for job in jobs}
                    if moments:
                        await self.redis.zadd(self._key("finished"), moments)
            await self.redis.set(done, "1")

    # -- reads ----------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        async with translated():
            body = await self.redis.hget(self._key("job", job_id), "j")
        return Job.from_json(body) if body else None

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
        return [Job.from_json(body) for body in bodies if body]

    async def latest(self, topics: Collection[str], limit: int = 100) -> list[Event]:
        async with translated():
            ids = await self.redis.sunion([self._key("topic", t) for t in topics])
            newest = (await self._newest_first(ids))[:limit]
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in newest:
                    pipe.hmget(self._key("job", job_id), ["c", "j", "s", "r"])
                rows = await pipe.execute()
        rows = sorted((row for row in rows if row[0]), key=lambda row: order(row[0]))
        return [self._event(c, {"j": j, "s": s, "r": r}) for c, j, s, r in rows]

    async def history(self, job_id: str, limit: int = 1000) -> list[Event]:
        async with translated():
            cursors = await self.redis.lrange(self._key("history", job_id), 0, limit - 1)
            async with self.redis.pipeline(transaction=False) as pipe:
                for cursor in cursors:
                    pipe.xrange(self._key("events"), cursor, cursor)
                found = await pipe.execute()
        return [self._event(*entries[0]) for entries in found if entries]

    async def read_since(self, cursor: str | None, *, topics: Collection[str] | None = None,
                         limit: int = 500) -> list[Event]:
        if topics is None and cursor is not None and self._reader is not None and not (
                self._swept_after(position := self.cursors.position(cursor))):
            recent = self._tail.since(position, limit)
            if recent is not None:
                return recent  # followers of the log: no call to Redis at all
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
            for entry_id, fields in entries:
                yield self._event(entry_id, fields)
            scanned += len(entries)
            if len(entries) < 500:
                return
            start = entries[-1][0]

    async def _start(self, cursor: str | None) -> str:
        """The entry id a read after `cursor` starts from."""
        if cursor is None:
            return "0-0"
        await self._check_epoch()
        position = self.cursors.position(cursor)
        if not _CURSOR.fullmatch(position):
            raise UnknownCursor(cursor)
        info = await self._stream_info()
        if info is None or order(position) > order(info["last-generated-id"]):
            raise UnknownCursor(cursor)
        if _trimmed_after(position, info) or order(position) < order(
                info.get("max-deleted-entry-id") or "0-0"):
            raise CursorExpired(cursor)
        return position

    async def _check_epoch(self) -> None:
        """Adopt the epoch Redis holds, should it have changed under this instance: a flush
        removed the key (this instance makes a new one, or takes another instance's). The
        stream's new ids are newer than the old ones, so without this an old cursor would
        name a position in the new log."""
        if await self.redis.get(self._key("secret", EPOCH)) == self.cursors.epoch:
            return
        self.cursors.adopt(await self.secret(EPOCH, new_epoch))
        self._tail.start(self._tail.last)  # its events carry cursors of the old epoch
        logger.warning("the Redis store was reset under this relay (prefix %r): cursors given "
                       "before are unknown now", self.prefix)

    def _swept_after(self, position: str) -> bool:
        """Whether this instance's sweeps deleted an event after the one at `position`."""
        return bool(_CURSOR.fullmatch(position)) and order(position) < order(self._swept)

    async def _stream_info(self) -> dict[str, Any] | None:
        try:
            info: dict[str, Any] = await self.redis.xinfo_stream(self._key("events"))
        except RedisError as exc:
            if "no such key" in str(exc).lower():
                return None
            raise
        return info

    async def last_cursor(self) -> str | None:
        last = await self._last_id()
        return self.cursors.cursor(last) if last is not None else None

    async def _last_id(self) -> str | None:
        async with translated():
            entries = await self.redis.xrevrange(self._key("events"), "+", "-", count=1)
        return str(entries[0][0]) if entries else None

    async def wait(self, cursor: str | None, timeout: float) -> None:
        after = "0-0" if cursor is None else self.cursors.position(cursor)
        if not _CURSOR.fullmatch(after):
            raise UnknownCursor(str(cursor))
        if self._reader is None or cursor is None or not self._tail.covers(after):
            block = max(1, int(min(timeout, MAX_BLOCK) * 1000))
            async with translated():
                await self.redis.xread({self._key("events"): after}, count=1, block=block)
            return
        changed = self._changed
        if self._tail.after(after):
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await changed.wait()

    def hurry(self, eager: bool) -> None:
        self.linger = READ_LINGER if eager else IDLE_LINGER

    async def publish(self, message: str) -> None:
        async with translated():
            await self.redis.publish(self._key("ops"), message)

    async def messages(self) -> AsyncIterator[str]:
        """Pub/sub on `ops`; after an error it subscribes again (what was published in
        between is not yielded)."""
        while not self._closing:
            try:
                async with translated(), self.redis.pubsub(
                        ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._key("ops"))
                    while not self._closing:
                        message = await pubsub.get_message(timeout=READ_BLOCK)
                        if message is not None and message["type"] == "message":
                            yield str(message["data"])
            except StoreError:
                logger.exception("could not listen for operational events on Redis; retrying")
                await asyncio.sleep(1)

    async def _read_loop(self) -> None:
        """The one reader of the log in this instance: every event, once, into the tail that
        the hub, the scheduler and outbound read from (relay.store.follow)."""
        failing, reading = False, Dedicated(self.connection)
        try:
            while not self._closing:
                try:
                    async with translated():
                        answer = await reading.call(
                            "XREAD", "COUNT", PAGE, "BLOCK", int(READ_BLOCK * 1000),
                            "STREAMS", self._key("events"), self._tail.last)
                except StoreError:
                    if not failing:
                        logger.exception("could not read the Redis event log; retrying")
                    failing = True
                    await asyncio.sleep(1)
                    continue
                failing = False
                if answer:  # RESP3 (redis-py's default) answers a map, RESP2 a list
                    entries = (next(iter(answer.values())) if isinstance(answer, dict)
                               else answer[0][1])
                    self._add(entries)
                    if 1 < len(entries) < PAGE:
                        await asyncio.sleep(self.linger)
        finally:
            await reading.close()

    def _add(self, entries: list[list[Any]]) -> None:
        """Take a page of the log (XREAD's entries: [entry id, [field, value, …]])."""
        ids = [entry[0] for entry in entries]
        events = [self._written.pop(entry_id) if entry_id in self._written
                  else self._entry(entry_id, flat) for entry_id, flat in entries]
        self._tail.extend(ids, events)
        if len(self._written) > MAX_TAIL:  # written while the reader was failing
            self._written.clear()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _entry(self, entry_id: str, flat: list[str]) -> Event:
        """The event of an entry as XREAD answers it: [field, value, …], taken by position
        when in the order the apply script writes them (the reader makes one per event)."""
        if flat[::2] == _FIELDS:
            return self._encoded(entry_id, *flat[1::2])
        return self._event(entry_id, dict(zip(flat[::2], flat[1::2], strict=True)))

    def _event(self, entry_id: str, fields: dict[str, str]) -> Event:
        if "T" in fields:
            return self._encoded(entry_id, *(fields[name] for name in _FIELDS))
        # Written before events carried their job's head.
        return Event(self.cursors.cursor(entry_id), Job.from_json(fields["j"]),
                     Source(fields["s"]), fields["r"])

    def _encoded(self, entry_id: str, body: str, source: str, received_at: str, job_id: str,
                 provider: str, external_id: str, state: str, version: str, topics: str
                 ) -> Event:
        head = JobHead(job_id, provider, external_id, _STATES[state], int(version),
                       _topics(topics))
        return Event.encoded(self.cursors.cursor(entry_id), head, body, _SOURCES[source],
                             received_at)


@dataclass(frozen=True, slots=True)
class _Write:
    provider: str
    external_id: str
    change: Change
    source: Source
    received_at: str
    dedupe_key: str | None


@dataclass(frozen=True, slots=True)
class _Prepared:
    write: _Write
    done: asyncio.Future[Applied]
    current: Job | None
    new: Job | None
    args: list[str | int]


class _JobCache:
    """The jobs this instance wrote or read last, by (provider, external id), as it believes
    Redis holds them (None: it believes there is none): a write is computed against them with
    no read first, and the script's compare-and-set catches a belief another instance made
    stale."""

    def __init__(self, size: int = MAX_CACHED) -> None:
        self.size = size
        self._jobs: dict[tuple[str, str], Job | None] = {}

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._jobs

    def get(self, key: tuple[str, str]) -> Job | None:
        return self._jobs.get(key)

    def keep(self, key: tuple[str, str], job: Job | None, *, absent: bool = True) -> None:
        """Believe `job` is what Redis holds (None and `absent`: that it holds none; None and
        not `absent`: nothing is known)."""
        self._jobs.pop(key, None)
        if job is not None or absent:
            self._jobs[key] = job
            if len(self._jobs) > self.size:
                del self._jobs[next(iter(self._jobs))]

    def clear(self) -> None:
        self._jobs.clear()


class _Tail:
    """The newest events of the log, in order, complete after `first`: what followers of
    the log read without a call to Redis. Only the event loop touches it. It speaks in
    entry ids (the cursors' positions). It keeps MAX_TAIL events even when the stream keeps
    fewer: a follower a page behind a burst reads on from here, where Redis may have trimmed
    its cursor away (the hub would end every stream, the scheduler rebuild its schedule).
    A resuming stream names its topics, and so reads Redis, expiry and all."""

    def __init__(self, size: int = MAX_TAIL) -> None:
        self.size = size
        self.first = "0-0"  # every event after this one is in `events`
        self.last = "0-0"  # the newest event read
        self.events: list[Event] = []
        self._orders: list[tuple[int, int]] = []

    def start(self, after: str) -> None:
        self.first = self.last = after
        self.events, self._orders = [], []

    def extend(self, ids: list[str], events: list[Event]) -> None:
        """Add `events`, whose entry ids are `ids`."""
        self.events += events
        self._orders += [order(entry_id) for entry_id in ids]
        self.last = ids[-1]
        if len(self.events) > self.size:
            dropped = len(self.events) - self.size
            first = self._orders[dropped - 1]
            self.first = f"{first[0]}-{first[1]}"
            del self.events[:dropped], self._orders[:dropped]

    def covers(self, cursor: str) -> bool:
        """Whether every event after `cursor` that the reader has seen is here."""
        return bool(_CURSOR.fullmatch(cursor)) and order(cursor) >= order(self.first)

    def after(self, cursor: str) -> bool:
        return bool(self._orders) and self._orders[-1] > order(cursor)

    def since(self, cursor: str, limit: int) -> list[Event] | None:
        """The events after `cursor`, or None when the tail cannot tell (it does not reach
        back to it, or the cursor is past what it has read: perhaps not a cursor at all)."""
        if not self.covers(cursor) or order(cursor) > order(self.last):
            return None
        start = bisect.bisect_right(self._orders, order(cursor))
        return self.events[start:start + limit]


def _answer(done: asyncio.Future[Applied], result: Applied | BaseException) -> None:
    if done.done():  # its caller went away
        return
    if isinstance(result, BaseException):
        done.set_exception(result)
    else:
        done.set_result(result)


def _finished_arg(job: Job | None) -> str:
    moment = None if job is None else finished(job)
    return "" if moment is None else repr(moment)


# A job's topics seldom change, and each of its events names them: both ways, they are
# encoded once per job rather than once per event.
@functools.lru_cache(maxsize=MAX_CACHED)
def _topics_json(topics: tuple[str, ...]) -> str:
    return json.dumps(list(topics))


@functools.lru_cache(maxsize=MAX_CACHED)
def _topics(encoded: str) -> tuple[str, ...]:
    return tuple(json.loads(encoded))


def _job_of(body: str) -> Job | None:
    return Job.from_json(body) if body else None


async def _drain(writes: asyncio.Queue[tuple[_Write, asyncio.Future[Applied]]]) -> None:
    """Wait until the writes already handed to `apply` are answered (closing finishes them)."""
    while not writes.empty():
        await asyncio.sleep(0.01)


def _trimmed_after(cursor: str, info: dict[str, Any]) -> bool:
    """Whether events after `cursor` were trimmed away. Trimming removes the oldest entries,
    so that is when some were trimmed and the cursor is older than the first one kept (a
    cursor naming exactly the last trimmed entry is reported too: it cannot be told apart)."""
    trimmed = int(info.get("entries-added", 0)) > int(info.get("length", 0))
    first = info.get("recorded-first-entry-id") or "0-0"
    return trimmed and order(cursor) < order(first)
