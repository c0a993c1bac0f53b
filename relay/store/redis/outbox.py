"""The Redis backend's outbox (relay.store.outbox).

The apply script calls `enqueue` (ENQUEUE_LUA, prepended to it) after it appends an event, so
the deliveries are written in the same atomic step as their event. Every other change is one
Lua script too, so instances sharing the Redis never see half of one.

Keys, under the prefix: `subs` (hash: id -> subscription JSON), `sh:<sub>` (hash: its health:
v version, st status, f failures, err last error, ss since, pr probes, pa probe at, why
disabled reason; absent for a subscription saved before health was kept, whose JSON says
whether it is enabled), `subs:on` (hash: id -> `{"t": topics, "e": events or null}`, or a
topics list as written before events, for the subscriptions not disabled: what `enqueue`
reads), `dseq` (counter), `dlv:<id>` (hash: n, sub, job,
c entry id, j job, s source, r received_at, st status, ca created, na next, t tries, si since,
by superseded by, why reason), `att:<id>` (list of attempt JSON), `dq:<sub>:<job>` (zset: the
pending queue, by n), `due:<sub>` (zset: the queues' heads, by next time), `dall:<sub>` (zset:
every delivery, by n, for listing), `pend:<sub>` (zset: pending ones, by creation time), and
`hw:<sub>` (hash: job -> n of its newest delivered), and `dj:<job>` (set: the job's deliveries,
for retention, `SWEEP_DELIVERIES_LUA`). Finished deliveries expire after KEEP_FINISHED;
listing drops the ids whose hash is gone.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Sequence
from typing import Any

from relay.errors import StoreError
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
    ReplayRow,
    Retried,
    Subscription,
    SubscriptionStatus,
    event_kinds,
    replay_choice,
)
from relay.store.redis.client import Connection, translated

MAX_LIST_SCAN = 5000
MAX_HEALTH_ATTEMPTS = 100


def kinds_arg(previous: Job | None, job: Job | None) -> str:
    """The apply script's argument for `enqueue`: the kinds of the event (relay.store.outbox
    decides them; the script only compares)."""
    return "[]" if job is None else json.dumps(sorted(event_kinds(previous, job)))


# enqueue(prefix, job id, cursor, job json, source, received_at, job topics json, kinds json)
ENQUEUE_LUA = """
local function enqueue(P, job_id, cursor, body, source, received, topics_json, kinds_json)
  local subs = redis.call('HGETALL', P .. 'subs:on')
  if #subs == 0 then return end
  local topics, kinds = {}, {}
  for _, topic in ipairs(cjson.decode(topics_json)) do topics[topic] = true end
  for _, kind in ipairs(cjson.decode(kinds_json or '[]')) do kinds[kind] = true end
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
  for i = 1, #subs, 2 do
    local wanted, want = false, cjson.decode(subs[i + 1])
    local events = want.e
    if want.t then want = want.t end
    for _, topic in ipairs(want) do
      if topic == '*' or topics[topic] then wanted = true end
    end
    if wanted and type(events) == 'table' then
      wanted = false
      for _, kind in ipairs(events) do
        if kinds[kind] then wanted = true end
      end
    end
    if wanted then
      local sub = subs[i]
      local n = redis.call('INCR', P .. 'dseq')
      local id = 'dlv_' .. n
      redis.call('HSET', P .. 'dlv:' .. id, 'n', n, 'sub', sub, 'job', job_id, 'c', cursor,
        'j', body, 's', source, 'r', received, 'st', 'pending', 'ca', now, 'na', now, 't', 0,
        'si', now)
      local queue = P .. 'dq:' .. sub .. ':' .. job_id
      if redis.call('ZCARD', queue) == 0 then redis.call('ZADD', P .. 'due:' .. sub, now, id) end
      redis.call('ZADD', queue, n, id)
      redis.call('ZADD', P .. 'dall:' .. sub, n, id)
      redis.call('ZADD', P .. 'pend:' .. sub, now, id)
      redis.call('SADD', P .. 'dj:' .. job_id, id)
    end
  end
end
"""

# chunked(command, key, items): the command on key with every item, a thousand at a time
# (Lua's unpack has a limit). drop_deliveries(prefix, job id, subscription ids): every delivery
# of a job that retention deletes, and its entries in each subscription's sets.
SWEEP_DELIVERIES_LUA = """
local function chunked(command, key, items)
  for first = 1, #items, 1000 do
    redis.call(command, key, unpack(items, first, math.min(first + 999, #items)))
  end
end
local function drop_deliveries(P, job_id, subs)
  local ids = redis.call('SMEMBERS', P .. 'dj:' .. job_id)
  for _, sub in ipairs(subs) do
    redis.call('DEL', P .. 'dq:' .. sub .. ':' .. job_id)
    redis.call('HDEL', P .. 'hw:' .. sub, job_id)
    for _, set in ipairs({'due:', 'pend:', 'dall:'}) do chunked('ZREM', P .. set .. sub, ids) end
  end
  for _, id in ipairs(ids) do redis.call('DEL', P .. 'dlv:' .. id, P .. 'att:' .. id) end
  redis.call('DEL', P .. 'dj:' .. job_id)
end
"""

# ARGV: prefix, id, status, attempt json, next_at, reason, keep seconds, attempts kept
_FINISH = """
local P, id, status = ARGV[1], ARGV[2], ARGV[3]
local key = P .. 'dlv:' .. id
local d = redis.call('HMGET', key, 'sub', 'job', 'st', 't', 'si', 'n')
if d[3] ~= 'pending' then return 0 end
local sub, job, n = d[1], d[2], d[6]
local tries = tonumber(d[4]) + 1
redis.call('RPUSH', P .. 'att:' .. id, ARGV[4])
redis.call('LTRIM', P .. 'att:' .. id, -tonumber(ARGV[8]), -1)
redis.call('HSET', key, 't', tries)
local queue = P .. 'dq:' .. sub .. ':' .. job
local due = P .. 'due:' .. sub
redis.call('ZREM', due, id)
local function close(close_id, close_status, by, why)
  local k = P .. 'dlv:' .. close_id
  redis.call('HSET', k, 'st', close_status)
  if by ~= '' then redis.call('HSET', k, 'by', by) end
  if why ~= '' then redis.call('HSET', k, 'why', why) end
  redis.call('ZREM', queue, close_id)
  redis.call('ZREM', P .. 'pend:' .. sub, close_id)
  redis.call('EXPIRE', k, ARGV[7])
  redis.call('EXPIRE', P .. 'att:' .. close_id, ARGV[7])
end
if status == 'pending' then
  local newer = redis.call('ZRANGEBYSCORE', queue, '(' .. n, '+inf')
  local head = id
  if #newer > 0 then
    head = newer[#newer]
    close(id, 'superseded', head, '')
    for i = 1, #newer - 1 do close(newer[i], 'superseded', head, '') end
  end
  redis.call('HSET', P .. 'dlv:' .. head, 't', tries, 'si', d[5], 'na', ARGV[5])
  redis.call('ZADD', due, ARGV[5], head)
  return 1
end
close(id, status, '', ARGV[6])
if status == 'delivered' then
  local known = tonumber(redis.call('HGET', P .. 'hw:' .. sub, job) or '0')
  if tonumber(n) > known then redis.call('HSET', P .. 'hw:' .. sub, job, n) end
end
local next_head = redis.call('ZRANGE', queue, 0, 0)
if next_head[1] then
  redis.call('ZADD', due, redis.call('HGET', P .. 'dlv:' .. next_head[1], 'na'), next_head[1])
end
return 1
"""

# ARGV: prefix, id, now
_RETRY = """
local P, id = ARGV[1], ARGV[2]
local key = P .. 'dlv:' .. id
local d = redis.call('HMGET', key, 'sub', 'job', 'st', 'n', 'ca')
if not d[1] then return 'missing' end
if d[3] ~= 'failed' then return 'not_failed' end
local n = tonumber(d[4])
local queue = P .. 'dq:' .. d[1] .. ':' .. d[2]
local last = redis.call('ZRANGE', queue, -1, -1, 'WITHSCORES')
local delivered = tonumber(redis.call('HGET', P .. 'hw:' .. d[1], d[2]) or '0')
if (last[2] and tonumber(last[2]) > n) or delivered > n then return 'newer' end
redis.call('HSET', key, 'st', 'pending', 'na', ARGV[3], 't', 0, 'si', ARGV[3])
redis.call('HDEL', key, 'why')
redis.call('PERSIST', key)
redis.call('PERSIST', P .. 'att:' .. id)
if redis.call('ZCARD', queue) == 0 then redis.call('ZADD', P .. 'due:' .. d[1], ARGV[3], id) end
redis.call('ZADD', queue, n, id)
redis.call('ZADD', P .. 'pend:' .. d[1], d[5], id)
return 'retried'
"""

_FAIL_PENDING = """
local function fail_pending(P, sub, reason, keep)
  for _, id in ipairs(redis.call('ZRANGE', P .. 'pend:' .. sub, 0, -1)) do
    local key = P .. 'dlv:' .. id
    redis.call('DEL', P .. 'dq:' .. sub .. ':' .. redis.call('HGET', key, 'job'))
    redis.call('HSET', key, 'st', 'failed', 'why', reason)
    redis.call('EXPIRE', key, keep)
    redis.call('EXPIRE', P .. 'att:' .. id, keep)
  end
  redis.call('DEL', P .. 'pend:' .. sub, P .. 'due:' .. sub)
end
"""

# ARGV: prefix, subscription id, keep seconds
_DROP = _FAIL_PENDING + """
local P, sub = ARGV[1], ARGV[2]
if redis.call('HEXISTS', P .. 'subs', sub) == 0 then return 0 end
redis.call('HDEL', P .. 'subs:on', sub)
fail_pending(P, sub, 'deleted', ARGV[3])
for _, id in ipairs(redis.call('ZRANGE', P .. 'dall:' .. sub, 0, -1)) do
  redis.call('DEL', P .. 'dlv:' .. id, P .. 'att:' .. id)
end
redis.call('DEL', P .. 'dall:' .. sub, P .. 'hw:' .. sub, P .. 'sh:' .. sub)
redis.call('HDEL', P .. 'subs', sub)
return 1
"""

_HEALTH_FIELDS = "'st', ARGV[5], 'f', ARGV[6], 'err', ARGV[7], 'ss', ARGV[8], 'pr', ARGV[9], " \
                 "'pa', ARGV[10], 'why', ARGV[11]"

# ARGV: prefix, id, subscription json, subs:on value, [5..11] health (kept when it has one)
_SAVE = f"""
local P, sub = ARGV[1], ARGV[2]
local key = P .. 'sh:' .. sub
redis.call('HSET', P .. 'subs', sub, ARGV[3])
if redis.call('EXISTS', key) == 0 then redis.call('HSET', key, 'v', 1, {_HEALTH_FIELDS}) end
if redis.call('HGET', key, 'st') == 'disabled' then
  redis.call('HDEL', P .. 'subs:on', sub)
else
  redis.call('HSET', P .. 'subs:on', sub, ARGV[4])
end
"""

# ARGV: prefix, id, version read ('' none), status before, [5..11] health after, keep seconds.
# Compare-and-set: another change since the read answers 'conflict', and it is read again.
_HEALTH = _FAIL_PENDING + f"""
local P, sub = ARGV[1], ARGV[2]
local body = redis.call('HGET', P .. 'subs', sub)
if not body then return 'missing' end
local key = P .. 'sh:' .. sub
local v = redis.call('HGET', key, 'v') or ''
if v ~= ARGV[3] then return 'conflict' end
redis.call('HSET', key, 'v', (tonumber(v) or 0) + 1, {_HEALTH_FIELDS})
if ARGV[5] == 'disabled' and ARGV[4] ~= 'disabled' then
  redis.call('HDEL', P .. 'subs:on', sub)
  fail_pending(P, sub, ARGV[11], ARGV[12])
elseif ARGV[5] ~= 'disabled' and ARGV[4] == 'disabled' then
  local s = cjson.decode(body)
  redis.call('HSET', P .. 'subs:on', sub, cjson.encode({{t = s.topics, e = s.events}}))
end
return 'ok'
"""

# ARGV: prefix, subscription id, only failed ('1' or '0'), now, delivery ids (oldest first).
# Each is copied unless, meanwhile, its job has a pending delivery or a newer one delivered.
_REPLAY = """
local P, sub, only_failed, now = ARGV[1], ARGV[2], ARGV[3] == '1', tonumber(ARGV[4])
if redis.call('HEXISTS', P .. 'subs:on', sub) == 0 then return 0 end
local count = 0
for i = 5, #ARGV do
  local d = redis.call('HMGET', P .. 'dlv:' .. ARGV[i], 'sub', 'job', 'c', 'j', 's', 'r', 'st',
    'n')
  local queue = P .. 'dq:' .. sub .. ':' .. (d[2] or '')
  local ok = d[1] == sub and (d[7] == 'failed' or (d[7] == 'delivered' and not only_failed))
  if ok and redis.call('ZCARD', queue) == 0
      and tonumber(redis.call('HGET', P .. 'hw:' .. sub, d[2]) or '0') <= tonumber(d[8]) then
    local n = redis.call('INCR', P .. 'dseq')
    local id = 'dlv_' .. n
    -- a microsecond apart, so the due order is the event order in every backend; every
    -- digit of the double written (%.6f would round neighbours to one value)
    local due = string.format('%.17g', now + count / 1000000)
    redis.call('HSET', P .. 'dlv:' .. id, 'n', n, 'sub', sub, 'job', d[2], 'c', d[3], 'j', d[4],
      's', d[5], 'r', d[6], 'st', 'pending', 'ca', ARGV[4], 'na', due, 't', 0, 'si', ARGV[4])
    redis.call('ZADD', P .. 'due:' .. sub, due, id)
    redis.call('ZADD', queue, n, id)
    redis.call('ZADD', P .. 'dall:' .. sub, n, id)
    redis.call('ZADD', P .. 'pend:' .. sub, ARGV[4], id)
    redis.call('SADD', P .. 'dj:' .. d[2], id)
    count = count + 1
  end
end
return count
"""


class RedisOutbox:
    """The `Outbox` of `RedisStore`, on the store's connection."""

    def __init__(self, connection: Connection, cursors: Cursors) -> None:
        self.redis: Any = connection.redis
        self._cursors = cursors
        self.prefix = connection.prefix
        self._key = connection.key
        self._finish_script = self.redis.register_script(_FINISH)
        self._retry_script = self.redis.register_script(_RETRY)
        self._drop_script = self.redis.register_script(_DROP)
        self._save_script = self.redis.register_script(_SAVE)
        self._health_script = self.redis.register_script(_HEALTH)
        self._replay_script = self.redis.register_script(_REPLAY)

    # -- subscriptions --------------------------------------------------------------------

    async def save_subscription(self, subscription: Subscription) -> None:
        known = await self.subscription(subscription.id)
        s = subscription if known is None else dataclasses.replace(
            subscription, created_at=known.created_at, health=known.health)
        on = json.dumps({"t": list(s.topics), "e": _events(s.events)})
        async with translated():
            await self._save_script(args=[self.prefix, s.id, _subscription_json(s), on,
                                          *_health_args(s.health)])

    async def subscriptions(self) -> list[Subscription]:
        async with translated():
            bodies = await self.redis.hgetall(self._key("subs"))
            found = await self._with_health(bodies)
        return sorted(found, key=lambda s: (s.created_at, s.id))

    async def subscription(self, subscription_id: str) -> Subscription | None:
        async with translated():
            body = await self.redis.hget(self._key("subs"), subscription_id)
            found = await self._with_health({subscription_id: body} if body else {})
        return found[0] if found else None

    async def _with_health(self, bodies: dict[str, str]) -> list[Subscription]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for subscription_id in bodies:
                pipe.hgetall(self._key("sh", subscription_id))
            healths = await pipe.execute()
        return [_subscription(body, health)
                for body, health in zip(bodies.values(), healths, strict=True)]

    async def delete_subscription(self, subscription_id: str) -> bool:
        async with translated():
            dropped = await self._drop_script(args=[self.prefix, subscription_id, KEEP_FINISHED])
        return bool(dropped)

    async def update_health(self, subscription_id: str, change: HealthChange
                            ) -> tuple[Health, Health] | None:
        async with translated():
            for _ in range(MAX_HEALTH_ATTEMPTS):
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.hget(self._key("subs"), subscription_id)
                    pipe.hgetall(self._key("sh", subscription_id))
                    body, fields = await pipe.execute()
                if body is None:
                    return None
                before = _health(fields, json.loads(body))
                after = change(before)
                if after == before:
                    return before, after
                answer = await self._health_script(args=[
                    self.prefix, subscription_id, fields.get("v", ""), before.status.value,
                    *_health_args(after), KEEP_FINISHED])
                if answer != "conflict":
                    return None if answer == "missing" else (before, after)
        raise StoreError(f"gave up changing the health of {subscription_id}: too much contention")

    # -- deliveries -----------------------------------------------------------------------

    async def due(self, subscription_id: str, now: float, limit: int,
                  exclude: Collection[str] = ()) -> Due:
        key = self._key("due", subscription_id)
        async with translated():
            ids = await self.redis.zrangebyscore(key, "-inf", now, start=0,
                                                 num=limit + len(exclude))
            ids = [i for i in ids if i not in exclude][:limit]
            later = await self.redis.zrangebyscore(key, f"({now}", "+inf", start=0, num=1,
                                                   withscores=True)
            found = await self._deliveries(ids)
        return Due(sorted(found, key=lambda d: d.next_at), later[0][1] if later else None)

    async def finish(self, outcomes: Sequence[Outcome]) -> None:
        if not outcomes:
            return
        async with translated(), self.redis.pipeline(transaction=False) as pipe:
            for o in outcomes:
                await self._finish_script(args=[
                    self.prefix, o.delivery_id, o.status.value, json.dumps(o.attempt.to_dict()),
                    o.next_at, o.reason or "", KEEP_FINISHED, MAX_ATTEMPTS_KEPT], client=pipe)
            await pipe.execute()

    async def deliveries(self, subscription_id: str, limit: int = 100,
                         status: DeliveryStatus | None = None) -> list[Delivery]:
        key = self._key("dall", subscription_id)
        found: list[Delivery] = []
        async with translated():
            for start in range(0, MAX_LIST_SCAN, 500):
                ids = await self.redis.zrevrange(key, start, start + 499)
                page = await self._deliveries(ids)
                if len(page) < len(ids):  # expired: forget them
                    await self.redis.zrem(key, *(set(ids) - {d.id for d in page}))
                found += [d for d in page if status is None or d.status is status]
                if len(found) >= limit or len(ids) < 500:
                    break
        return found[:limit]

    async def delivery(self, delivery_id: str) -> Delivery | None:
        async with translated():
            found = await self._deliveries([delivery_id])
        return found[0] if found else None

    async def _deliveries(self, ids: Sequence[str]) -> list[Delivery]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for delivery_id in ids:
                pipe.hgetall(self._key("dlv", delivery_id))
                pipe.lrange(self._key("att", delivery_id), 0, -1)
            answers = await pipe.execute()
        return [_delivery(delivery_id, fields, attempts, self._cursors)
                for delivery_id, fields, attempts in zip(ids, answers[::2], answers[1::2],
                                                         strict=True) if fields]

    async def retry_delivery(self, delivery_id: str, now: float) -> Retried:
        async with translated():
            answer = await self._retry_script(args=[self.prefix, delivery_id, now])
        return Retried(answer)

    async def replay(self, subscription_id: str, since: float, now: float, *,
                     only_failed: bool = False, limit: int = REPLAY_MAX) -> Replayed:
        async with translated():
            rows = await self._newest_first(subscription_id, since)
            chosen, truncated = replay_choice(rows, since, only_failed, limit)
            count = await self._replay_script(args=[
                self.prefix, subscription_id, "1" if only_failed else "0", repr(now), *chosen])
        return Replayed(int(count), truncated)

    async def _newest_first(self, subscription_id: str, since: float) -> list[ReplayRow]:
        """The subscription's deliveries newest first, back to `since` or REPLAY_SCAN of them
        (a page more at most); expired ones left out."""
        rows: list[ReplayRow] = []
        for start in range(0, REPLAY_SCAN + 1, 500):
            ids = await self.redis.zrevrange(self._key("dall", subscription_id), start,
                                             start + 499)
            async with self.redis.pipeline(transaction=False) as pipe:
                for delivery_id in ids:
                    pipe.hmget(self._key("dlv", delivery_id), "job", "st", "ca")
                answers = await pipe.execute()
            rows += [(delivery_id, job, DeliveryStatus(status), float(created))
                     for delivery_id, (job, status, created) in zip(ids, answers, strict=True)
                     if job is not None]
            if len(ids) < 500 or (rows and rows[-1][3] < since):
                break
        return rows

    async def outbox_stats(self) -> OutboxStats:
        async with translated():
            ids = await self.redis.hkeys(self._key("subs"))
            async with self.redis.pipeline(transaction=False) as pipe:
                for subscription_id in ids:
                    pipe.zcard(self._key("pend", subscription_id))
                    pipe.zrange(self._key("pend", subscription_id), 0, 0, withscores=True)
                answers = await pipe.execute()
        oldest = [first[0][1] for first in answers[1::2] if first]
        return OutboxStats(sum(answers[::2]), min(oldest, default=None))


def _subscription_json(s: Subscription) -> str:
    """Its definition; the health is kept apart (`sh:<id>`)."""
    return json.dumps({"id": s.id, "url": s.url, "topics": list(s.topics), "secret": s.secret,
                       "origin": s.origin, "created_at": s.created_at,
                       "events": _events(s.events), "name": s.name})


def _events(events: tuple[EventKind, ...] | None) -> list[str] | None:
    return None if events is None else [e.value for e in events]


def _subscription(body: str, health: dict[str, str]) -> Subscription:
    d = json.loads(body)
    events = d.get("events")
    return Subscription(d["id"], d["url"], tuple(d["topics"]), d["secret"], d["origin"],
                        d["created_at"],
                        None if events is None else tuple(EventKind(e) for e in events),
                        d.get("name"), _health(health, d))


def _health(f: dict[str, str], legacy: dict[str, Any]) -> Health:
    """From `sh:<id>`; for a subscription saved before it, from what its JSON said."""
    if not f:
        disabled = legacy.get("enabled") is False
        return Health(SubscriptionStatus.DISABLED if disabled else SubscriptionStatus.ACTIVE,
                      disabled_reason=legacy.get("disabled_reason"))
    return Health(SubscriptionStatus(f["st"]), int(f["f"]), f["err"] or None, float(f["ss"]),
                  int(f["pr"]), float(f["pa"]), f["why"] or None)


def _health_args(h: Health) -> list[str | int | float]:
    return [h.status.value, h.consecutive_failures, h.last_error or "", repr(h.since), h.probes,
            repr(h.probe_at), h.disabled_reason or ""]


def _delivery(delivery_id: str, f: dict[str, str], attempts: list[str], cursors: Cursors
              ) -> Delivery:
    event = Event(cursors.cursor(f["c"]), Job.from_json(f["j"]), Source(f["s"]),
                  f["r"])
    return Delivery(delivery_id, f["sub"], event, DeliveryStatus(f["st"]), float(f["ca"]),
                    float(f["na"]), int(f["t"]), float(f["si"]),
                    tuple(Attempt.from_dict(json.loads(a)) for a in attempts),
                    f.get("by"), f.get("why"))
