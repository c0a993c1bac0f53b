"""The redis backend (see store.py)."""

from relay.store.redis.store import RedisStore

__all__ = ["RedisStore"]
