"""Fault injection: latency, 429 storms, server errors and dropped connections.

Each rule fires either for the next `count` matching requests or at random with probability
`rate` (seeded, so runs are repeatable). Faulted requests never reach the emulated API, except
latency below the client's timeout, after which the request is served normally.

A latency holds the request `seconds`, then serves it (a slow call; a write held on its way to
the provider), unless the rule is a `round_trip`: the request is then served at once and
answered `seconds` after it arrived, the sandbox's own processing counted inside those seconds
as a provider's is inside its round trip (`serve --latency`). Either way a latency at or beyond
the client's timeout (known to the in-process transport) is a timeout and nothing is served.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field, model_validator

FaultKind = Literal["latency", "rate_limit", "server_error", "drop"]


class FaultRule(BaseModel):
    """One fault to inject; the control API accepts this model as JSON."""

    kind: FaultKind
    provider: Literal["mailchimp", "brevo"] | None = None
    method: str | None = None
    path_prefix: str = Field(default="", description="Relative to the API root, e.g. /lists")
    count: int | None = Field(default=None, ge=1)
    rate: float | None = Field(default=None, gt=0, le=1)
    seconds: float = Field(
        default=0.0, ge=0, description="Latency, or the reset hint a 429 carries."
    )
    status: int = Field(default=503, ge=500, le=599, description="For server_error.")
    round_trip: bool = Field(
        default=False,
        description="For latency: serve at once and answer `seconds` after the request "
        "arrived, the sandbox's processing counted inside (a provider's round trip); by "
        "default the request is held `seconds`, then served.",
    )

    @model_validator(mode="after")
    def _count_or_rate(self) -> FaultRule:
        if (self.count is None) == (self.rate is None):
            raise ValueError("give exactly one of count and rate")
        return self


@dataclass
class Fault:
    """What to do to one request."""

    latency: float = 0.0
    """Seconds the request is held before it is served."""
    round_trip: float = 0.0
    """Seconds after its arrival the answer leaves at the earliest (processing counted inside)."""
    drop: bool = False
    status: int | None = None
    reset: float = 0.0


class Faults:
    """The active rules; thread-safe."""

    def __init__(self, seed: int = 0) -> None:
        self._rules: list[tuple[FaultRule, list[int]]] = []
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.injected: dict[str, int] = {}

    def add(self, rule: FaultRule) -> None:
        """Activate a rule."""
        with self._lock:
            self._rules.append((rule, [rule.count or 0]))

    def clear(self) -> None:
        """Deactivate every rule."""
        with self._lock:
            self._rules.clear()

    def draw(self, provider: str, method: str, path: str) -> Fault:
        """The faults that hit this request (latencies add up, the first failure wins)."""
        fault = Fault()
        with self._lock:
            for rule, remaining in self._rules:
                if not self._matches(rule, provider, method, path) or not self._fires(
                    rule, remaining
                ):
                    continue
                self.injected[rule.kind] = self.injected.get(rule.kind, 0) + 1
                if rule.kind == "latency" and rule.round_trip:
                    fault.round_trip += rule.seconds
                elif rule.kind == "latency":
                    fault.latency += rule.seconds
                elif fault.status is None and not fault.drop:
                    fault.drop = rule.kind == "drop"
                    fault.status = {"rate_limit": 429, "server_error": rule.status}.get(rule.kind)
                    fault.reset = rule.seconds
            self._rules = [(r, n) for r, n in self._rules if r.count is None or n[0] > 0]
        return fault

    @staticmethod
    def _matches(rule: FaultRule, provider: str, method: str, path: str) -> bool:
        return (
            rule.provider in (None, provider)
            and rule.method in (None, method)
            and path.startswith(rule.path_prefix)
        )

    def _fires(self, rule: FaultRule, remaining: list[int]) -> bool:
        if rule.count is not None:
            remaining[0] -= 1
            return remaining[0] >= 0
        return self._random.random() < (rule.rate or 0.0)
