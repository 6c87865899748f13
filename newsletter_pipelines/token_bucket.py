"""A token bucket: `burst` takes at once, refilled at `rate` a second (callers lock it)."""

from __future__ import annotations

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
