"""The Redis connection the store, its outbox and its leases share: one client and its pool,
the key prefix, and the one place `redis.RedisError` becomes `StoreError`; and `Dedicated`,
a connection of that pool for a loop of its own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from relay.errors import StoreError

SOCKET_TIMEOUT = 15.0
MAX_CONNECTIONS = 256
POOL_WAIT = 10.0  # seconds a command waits for a pooled connection


class Connection:
    """`redis` is the client; `key(*parts)` names a key under the prefix."""

    def __init__(self, url: str, prefix: str) -> None:
        self.prefix = f"{prefix}:"
        # With decode_responses every answer is a str, which redis-py's types cannot say
        # (they are bytes | str throughout), so the client is typed loosely on purpose.
        # A blocking pool: past MAX_CONNECTIONS a command waits for a free connection (up
        # to POOL_WAIT) instead of failing at once, which a burst of streams opening did.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT, decode_responses=True,
            socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=5, health_check_interval=30)
        self.redis: Any = aioredis.Redis(connection_pool=pool)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def aclose(self) -> None:
        await self.redis.aclose(close_connection_pool=True)  # ours: built with the client


class Dedicated:
    """A connection of the pool held by one loop (the log reader, the writer), its commands
    packed in C by hiredis and sent with no command layer between: called thousands of times
    a second, redis-py's layers cost more than the rest of the call (of 15 arguments per
    webhook, packing them one by one in Python took a tenth of a webhook's CPU). A failed
    call leaves the connection closed; the next one opens it again."""

    def __init__(self, connection: Connection) -> None:
        self._pool = connection.redis.connection_pool
        self._connection: Any = None

    async def call(self, *args: str | int | bytes) -> Any:
        if self._connection is None:
            self._connection = await self._pool.get_connection()
        # hiredis's stub (3.x) types the tuple as of one item: any length is packed.
        await self._connection.send_packed_command(
            hiredis.pack_command(args))  # type: ignore[arg-type]
        return await self._connection.read_response()

    async def close(self) -> None:
        """Give the connection back, closed: it may have been left mid-call."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect()
            await self._pool.release(connection)


@contextlib.asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """redis-py's errors become StoreError here, for every part of the Redis store; and a
    cancellation redis-py swallowed is raised again."""
    try:
        yield
    except RedisError as exc:
        _cancelled_meanwhile()
        raise StoreError(f"Redis failed: {exc}") from exc
    _cancelled_meanwhile()


def _cancelled_meanwhile() -> None:
    # A cancel landing while redis-py (8.2) is inside a command is sometimes swallowed: the
    # command returns as if nothing happened, and a task looping over commands never ends
    # (a relay's shutdown waited forever on its retention loop). The task still counts the
    # request (`cancelling`), so it is delivered here.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
