"""What the receiver refuses to take: too many requests (429) and too large bodies (413)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import AsyncIterator, Callable

from newsletter_pipelines.token_bucket import TokenBucket

MAX_BODY_BYTES = 1024 * 1024
MAX_TRACKED_CLIENTS = 10_000


class BodyTooLargeError(Exception):
    """The body is larger than the limit (answered 413)."""


class BadContentLengthError(Exception):
    """The Content-Length header is no number (answered 400)."""


class RateLimiter:
    """A token bucket per key (client and provider): `burst` requests at once, refilled at
    `rate` per second."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """Take one token from `key`'s bucket; False when it is empty."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= MAX_TRACKED_CLIENTS:
                    self._forget_full(now)
                bucket = self._buckets[key] = TokenBucket.full(self.rate, self.burst, now)
            return bucket.take(now)

    def retry_after(self) -> int:
        """Whole seconds until an empty bucket holds a token again."""
        return max(1, math.ceil(1 / self.rate))

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled completely: they behave like new ones."""
        full = [key for key, bucket in self._buckets.items() if bucket.level(now) >= self.burst]
        for key in full:
            del self._buckets[key]


def declared_length(content_length: str | None) -> int | None:
    """The Content-Length header as a number; too large ones raise at once."""
    if content_length is None:
        return None
    value = content_length.strip()
    if not (value.isascii() and value.isdigit()):
        raise BadContentLengthError(value[:40])
    if len(value.lstrip("0")) > 12 or int(value) > MAX_BODY_BYTES:
        raise BodyTooLargeError
    return int(value)


async def read_limited(chunks: AsyncIterator[bytes], limit: int = MAX_BODY_BYTES) -> bytes:
    """The whole body, read chunk by chunk; stops reading as soon as it exceeds `limit`."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise BodyTooLargeError
    return bytes(body)
