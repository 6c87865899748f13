"""The pacer: evenly spaced start times across threads, on a clock the test turns."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from newsletter_pipelines.token_bucket import Pacer


class Clock:
    """A clock that moves only when told; sleeping does not move it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)


def most_in_a_second(slots: list[float]) -> int:
    """The most slots any half-open window of one second holds."""
    ordered = sorted(slots)
    return max(
        sum(1 for s in ordered[i:] if s < start + 1.0 - 1e-9) for i, start in enumerate(ordered)
    )


@pytest.mark.parametrize("rate", [8.0, 9.5, 10.0])
def test_concurrent_callers_never_get_more_than_the_rate_in_any_second(rate: float) -> None:
    clock = Clock()
    pacer = Pacer(rate, clock=clock, sleep=clock.sleep)
    with ThreadPoolExecutor(8) as pool:
        slots = list(pool.map(lambda _: pacer.acquire(), range(200)))
    assert len(set(slots)) == 200
    assert most_in_a_second(slots) == math.ceil(rate)
    assert max(slots) == pytest.approx(100.0 + 199 / rate)  # the budget spent, none skipped


def test_an_idle_spell_is_followed_by_no_burst() -> None:
    clock = Clock()
    pacer = Pacer(9.5, clock=clock, sleep=clock.sleep)
    pacer.acquire()
    clock.now += 60.0
    slots = [pacer.acquire() for _ in range(12)]
    assert slots[0] == clock.now
    assert most_in_a_second(slots) == 10
    assert clock.slept[-1] == pytest.approx(11 / 9.5)


def test_a_caller_waking_late_keeps_its_slot_so_the_next_is_not_pushed_back() -> None:
    clock = Clock()
    pacer = Pacer(10.0, clock=clock, sleep=clock.sleep)
    assert [pacer.acquire(), pacer.acquire()] == [100.0, pytest.approx(100.1)]
    clock.now = 100.15  # the second caller woke 50 ms late; the third asks now
    assert pacer.acquire() == pytest.approx(100.2)
    assert clock.slept[-1] == pytest.approx(0.05)
