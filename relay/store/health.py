"""Whether a store's writes succeed: `/readyz` answers 503 while they fail, and the log says
so once when they start failing and once when they work again (not once per request)."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class WriteHealth:
    def __init__(self, store: str) -> None:
        self.store = store
        self.failure: str | None = None  # why the last write failed; None: it succeeded

    def failed(self, error: BaseException) -> None:
        if self.failure is None:
            logger.error("%s: writes fail: %s; webhooks are answered 503 until they work "
                         "again", self.store, error)
        self.failure = str(error)

    def succeeded(self) -> None:
        if self.failure is not None:
            logger.warning("%s: writes work again", self.store)
        self.failure = None
