"""The sqlite backend (see store.py)."""

from relay.store.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore"]
