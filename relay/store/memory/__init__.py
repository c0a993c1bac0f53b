"""The memory backend (see store.py)."""

from relay.store.memory.store import MemoryStore

__all__ = ["MemoryStore"]
