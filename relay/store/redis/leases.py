"""Leases on Redis (relay.store.leases): `lease:<name>` holds its owner, with a TTL, so a
lease whose owner died lapses by itself. Claims and releases are Lua scripts: atomic for
every name they touch."""

from __future__ import annotations

from collections.abc import Sequence

from relay.store.redis.client import Connection, translated

# KEYS: lease keys; ARGV: owner, ttl ms. Returns the keys the owner holds afterwards.
_CLAIM = """
local held = {}
for _, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    table.insert(held, key)
  elseif not holder and redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    table.insert(held, key)
  end
end
return held
"""

_RELEASE = """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
return 0
"""


class RedisLeases:
    shared = True

    def __init__(self, connection: Connection) -> None:
        self._key = connection.key
        self._claim = connection.redis.register_script(_CLAIM)
        self._release = connection.redis.register_script(_RELEASE)

    async def claim(self, names: Sequence[str], owner: str, ttl: float) -> set[str]:
        if not names:
            return set()
        keys = [self._key("lease", name) for name in names]
        async with translated():
            held = await self._claim(keys=keys, args=[owner, max(1, int(ttl * 1000))])
        lease_prefix = self._key("lease", "")
        return {key.removeprefix(lease_prefix) for key in held}

    async def release(self, names: Sequence[str], owner: str) -> None:
        if names:
            async with translated():
                await self._release(keys=[self._key("lease", n) for n in names], args=[owner])
