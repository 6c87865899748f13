"""A token bucket: `burst` takes at once, refilled at `rate` a second (callers lock it); and a
`Pacer` that hands out evenly spaced start times across threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class TokenBucket:
    rate: float  # tokens a second
    burst: float  # most tokens held
    tokens: float
    updated: float  # the clock's time of `tokens`

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def level(self, now: float) -> float:
        """The tokens held at `now`."""
        return min(self.burst, self.tokens + (now - self.updated) * self.rate)

    def take(self, now: float) -> bool:
        """Take one token at `now`; False when none is held."""
        self.tokens, self.updated = self.level(now), now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Pacer:
    """Start times `1 / rate` apart, handed out in turn across threads: any second holds at
    most `rate` of them (rounded up). A slot is never in the past, so no burst follows an idle
    spell; a caller that wakes late keeps the slot's place, so the budget is spent in full as
    long as a call waits (a token bucket of one token whose takers queue)."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1.0 / rate
        self._clock, self._sleep = clock, sleep
        self._next = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait for the next slot; returns it (a time of the clock)."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            self._sleep(slot - now)
        return slot
