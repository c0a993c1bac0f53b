"""Faults a simulated provider answers with instead of (or before) its normal answer."""

from __future__ import annotations

import dataclasses
import random
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    """One fault, applied to the next `count` requests (to `route` only, if given).

    - `status`: answer with this status and the error envelope (`Retry-After: retry_after`
      when given, e.g. 429 or 503);
    - `delay`: answer this many seconds late (then normally, or with `status`);
    - `hang`: hold the request until the server stops (longer than any client timeout);
    - `body`: answer 200 with these bytes as `application/json` (unreadable ones, say);
    - `oversize`: answer 200 with a JSON object this many bytes long, streamed without a
      Content-Length (the provider counts in `streamed` the bytes it got to send);
    - `drop_webhooks`: an int drops the next that many webhook deliveries; a float in (0, 1]
      drops that fraction of deliveries until `FaultQueue.clear()`. Consumes no request.
    """

    status: int | None = None
    retry_after: float | None = None
    delay: float = 0.0
    hang: bool = False
    body: bytes | None = None
    oversize: int = 0
    count: int = 1
    route: str | None = None
    drop_webhooks: int | float = 0

    def __post_init__(self) -> None:
        if self.count < 1 or self.delay < 0 or (self.retry_after or 0) < 0 or self.oversize < 0:
            raise ValueError("Fault count must be >= 1, delay, retry_after and oversize >= 0")
        if self.status is not None and (self.body is not None or self.oversize):
            raise ValueError("a Fault answers a status, or a body, not both")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"Fault status {self.status} is not an HTTP status")
        if self.drop_webhooks < 0 or (isinstance(self.drop_webhooks, float)
                                      and self.drop_webhooks > 1):
            raise ValueError("drop_webhooks is a count, or a fraction in (0, 1]")
        if not (self.affects_requests or self.drop_webhooks):
            raise ValueError("a Fault needs status, delay, hang, body, oversize or drop_webhooks")

    @property
    def affects_requests(self) -> bool:
        return (self.status is not None or self.delay > 0 or self.hang
                or self.body is not None or self.oversize > 0)


class FaultQueue:
    """FIFO of pending faults; safe to push from a test thread while the server runs."""

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._queue: list[Fault] = []
        self._drop_next = 0
        self._drop_fraction = 0.0
        self._random = random.Random(seed)

    def push(self, *faults: Fault) -> None:
        with self._lock:
            for fault in faults:
                self._push_one(fault)

    def _push_one(self, fault: Fault) -> None:
        if isinstance(fault.drop_webhooks, int):
            self._drop_next += fault.drop_webhooks
        else:
            self._drop_fraction = fault.drop_webhooks
        if fault.affects_requests:
            self._queue.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            self._drop_next = 0
            self._drop_fraction = 0.0

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)

    def take(self, route: str) -> Fault | None:
        """The fault for this request, if one is pending for its route."""
        with self._lock:
            for index, fault in enumerate(self._queue):
                if fault.route in (None, route):
                    return self._consume(index, fault)
        return None

    def _consume(self, index: int, fault: Fault) -> Fault:
        if fault.count > 1:
            self._queue[index] = dataclasses.replace(fault, count=fault.count - 1)
        else:
            del self._queue[index]
        return fault

    def drop_webhook(self) -> bool:
        """Whether to drop the webhook delivery about to be made."""
        with self._lock:
            if self._drop_next > 0:
                self._drop_next -= 1
                return True
            return self._drop_fraction > 0 and self._random.random() < self._drop_fraction
