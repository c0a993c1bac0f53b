"""The Redis backend's outbox (relay.store.outbox).

The apply script calls `enqueue` (ENQUEUE_LUA, prepended to it) after it appends an event, so
the deliveries are written in the same atomic step as their event. Every other change is one
Lua script too, so instances sharing the Redis never see half of one.

Keys, under the prefix: `subs` (hash: id -> subscription JSON), `subs:on` (hash: id -> topics
JSON, enabled ones only: what `enqueue` reads), `dseq` (counter), `dlv:<id>` (hash: n, sub, job,
c cursor, j job, s source, r received_at, st status, ca created, na next, t tries, si since,
by superseded by, why reason), `att:<id>` (list of attempt JSON), `dq:<sub>:<job>` (zset: the
pending queue, by n), `due:<sub>` (zset: the queues' heads, by next time), `dall:<sub>` (zset:
every delivery, by n, for listing), `pend:<sub>` (zset: pending ones, by creation time), and
`hw:<sub>` (hash: job -> n of its newest delivered). Finished deliveries expire after
KEEP_FINISHED; listing drops the ids whose hash is gone.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

from relay.models import Event, Job, Source
from relay.store.outbox import (
    KEEP_FINISHED,
    MAX_ATTEMPTS_KEPT,
    Attempt,
    Delivery,
    DeliveryStatus,
    Due,
    OutboxStats,
    Outcome,
    Retried,
    Subscription,
)
from relay.store.redis.client import Connection, translated

MAX_LIST_SCAN = 5000

# enqueue(prefix, job id, cursor, job json, source, received_at, job topics json)
ENQUEUE_LUA = """
local function enqueue(P, job_id, cursor, body, source, received, topics_json)
  local subs = redis.call('HGETALL', P .. 'subs:on')
  if #subs == 0 then return end
  local topics = {}
  for _, topic in ipairs(cjson.decode(topics_json)) do topics[topic] = true end
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
  for i = 1, #subs, 2 do
    local wanted = false
    for _, topic in ipairs(cjson.decode(subs[i + 1])) do
      if topic == '*' or topics[topic] then wanted = true end
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
    end
  end
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

# ARGV: prefix, subscription id, reason ('' to delete), subscription json when disabling,
#       keep seconds
_DROP = """
local P, sub, reason = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HEXISTS', P .. 'subs', sub) == 0 then return 0 end
redis.call('HDEL', P .. 'subs:on', sub)
for _, id in ipairs(redis.call('ZRANGE', P .. 'pend:' .. sub, 0, -1)) do
  local key = P .. 'dlv:' .. id
  redis.call('DEL', P .. 'dq:' .. sub .. ':' .. redis.call('HGET', key, 'job'))
  redis.call('HSET', key, 'st', 'failed', 'why', reason)
  redis.call('EXPIRE', key, ARGV[5])
end
redis.call('DEL', P .. 'pend:' .. sub, P .. 'due:' .. sub)
if reason ~= '' then
  redis.call('HSET', P .. 'subs', sub, ARGV[4])
  return 1
end
for _, id in ipairs(redis.call('ZRANGE', P .. 'dall:' .. sub, 0, -1)) do
  redis.call('DEL', P .. 'dlv:' .. id, P .. 'att:' .. id)
end
redis.call('DEL', P .. 'dall:' .. sub, P .. 'hw:' .. sub)
redis.call('HDEL', P .. 'subs', sub)
return 1
"""


class RedisOutbox:
    """The `Outbox` of `RedisStore`, on the store's connection."""

    def __init__(self, connection: Connection) -> None:
        self.redis: Any = connection.redis
        self.prefix = connection.prefix
        self._key = connection.key
        self._finish_script = self.redis.register_script(_FINISH)
        self._retry_script = self.redis.register_script(_RETRY)
        self._drop_script = self.redis.register_script(_DROP)

    # -- subscriptions --------------------------------------------------------------------

    async def save_subscription(self, subscription: Subscription) -> None:
        known = await self.subscription(subscription.id)
        created = known.created_at if known is not None else subscription.created_at
        body = _subscription_json(subscription, created)
        async with translated(), self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key("subs"), subscription.id, body)
            if subscription.enabled:
                pipe.hset(self._key("subs:on"), subscription.id,
                          json.dumps(list(subscription.topics)))
            else:
                pipe.hdel(self._key("subs:on"), subscription.id)
            await pipe.execute()

    async def subscriptions(self) -> list[Subscription]:
        async with translated():
            found = await self.redis.hvals(self._key("subs"))
        return sorted((_subscription(body) for body in found), key=lambda s: (s.created_at, s.id))

    async def subscription(self, subscription_id: str) -> Subscription | None:
        async with translated():
            body = await self.redis.hget(self._key("subs"), subscription_id)
        return _subscription(body) if body else None

    async def delete_subscription(self, subscription_id: str) -> bool:
        return await self._drop(subscription_id, "", "")

    async def disable_subscription(self, subscription_id: str, reason: str) -> None:
        known = await self.subscription(subscription_id)
        if known is not None:
            off = Subscription(known.id, known.url, known.topics, known.secret, known.origin,
                               False, reason, known.created_at)
            await self._drop(subscription_id, reason, _subscription_json(off, off.created_at))

    async def _drop(self, subscription_id: str, reason: str, body: str) -> bool:
        async with translated():
            dropped = await self._drop_script(
                args=[self.prefix, subscription_id, reason, body, KEEP_FINISHED])
        return bool(dropped)

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
        return [_delivery(delivery_id, fields, attempts)
                for delivery_id, fields, attempts in zip(ids, answers[::2], answers[1::2],
                                                         strict=True) if fields]

    async def retry_delivery(self, delivery_id: str, now: float) -> Retried:
        async with translated():
            answer = await self._retry_script(args=[self.prefix, delivery_id, now])
        return Retried(answer)

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


def _subscription_json(s: Subscription, created_at: str) -> str:
    return json.dumps({**s.to_dict(), "created_at": created_at, "secret": s.secret})


def _subscription(body: str) -> Subscription:
    d = json.loads(body)
    return Subscription(d["id"], d["url"], tuple(d["topics"]), d["secret"], d["origin"],
                        d["enabled"], d["disabled_reason"], d["created_at"])


def _delivery(delivery_id: str, f: dict[str, str], attempts: list[str]) -> Delivery:
    event = Event(f["c"], Job.from_dict(json.loads(f["j"])), Source(f["s"]), f["r"])
    return Delivery(delivery_id, f["sub"], event, DeliveryStatus(f["st"]), float(f["ca"]),
                    float(f["na"]), int(f["t"]), float(f["si"]),
                    tuple(Attempt.from_dict(json.loads(a)) for a in attempts),
                    f.get("by"), f.get("why"))
