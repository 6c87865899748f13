"""`state.exclusions.record_eligibility`: one run at a time stores the exclusions and the
eligible-count baseline, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from newsletter_pipelines.db import create_engine
from newsletter_pipelines.state.exclusions import record_eligibility
from newsletter_pipelines.state.schema import ensure_schema
from newsletter_pipelines.sync.guards import DropVerdict, check_count_drop


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.sqlite3'}"
    return request.getfixturevalue("postgres_url")


def excluded(run: str, count: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "contact_id": [f"{run}-{i}" for i in range(count)],
            "reason": ["duplicate"] * count,
            "email": [f"{run}{i}@example.de" for i in range(count)],
            "detail": [None] * count,
        }
    )


def judging(current: int, seen: list[int | None]) -> Callable[[int | None], DropVerdict]:
    def judge(previous: int | None) -> DropVerdict:
        seen.append(previous)
        return check_count_drop(previous, current, max_drop_share=0.5)

    return judge


def stored(engine: sa.Engine) -> tuple[list[tuple[str, str]], list[tuple[int, str]]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT contact_id, run_id FROM eligibility_exclusions"))
        base = conn.execute(sa.text("SELECT eligible_count, run_id FROM eligibility_baseline"))
        return sorted(map(tuple, rows)), list(map(tuple, base))


def test_a_second_run_waits_for_the_first_and_judges_against_its_baseline(state_url: str) -> None:
    """Run A holds its transaction open (its judge waits); run B, started meanwhile, must not
    store anything before A commits, and then compares with A's baseline."""
    engine = create_engine(state_url)
    ensure_schema(engine, upgrade=True)
    inside, release = threading.Event(), threading.Event()
    seen_a: list[int | None] = []
    seen_b: list[int | None] = []

    def slow(previous: int | None) -> DropVerdict:
        inside.set()
        assert release.wait(30)
        return judging(100, seen_a)(previous)

    first = threading.Thread(target=record_eligibility, args=(engine, excluded("a", 3), "a", slow))
    first.start()
    assert inside.wait(30)
    done = threading.Event()

    def second_run() -> None:
        record_eligibility(engine, excluded("b", 2), "b", judging(90, seen_b))
        done.set()

    second = threading.Thread(target=second_run)
    second.start()
    assert not done.wait(1.0), "the second run wrote while the first held its transaction"
    release.set()
    first.join(30)
    second.join(30)
    assert done.is_set()
    assert seen_a == [None] and seen_b == [100]
    rows, base = stored(engine)
    assert rows == [("b-0", "b"), ("b-1", "b")] and base == [(90, "b")]


def test_a_failed_verdict_keeps_the_baseline(state_url: str) -> None:
    engine = create_engine(state_url)
    ensure_schema(engine, upgrade=True)
    record_eligibility(engine, excluded("a", 1), "a", judging(100, []))
    _, verdict = record_eligibility(engine, excluded("b", 1), "b", judging(10, []))
    assert not verdict.passed
    assert stored(engine) == ([("b-0", "b")], [(100, "a")])
