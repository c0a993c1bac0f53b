"""Stopping background tasks, the one way every component does it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger(__name__)


async def cancel_all(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel `tasks` and wait until each has ended. A task that had already failed is
    logged rather than raised, so one crash does not stop the others from being stopped."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, Exception):
            name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)
            logger.error("background task %s had failed", name, exc_info=result)
