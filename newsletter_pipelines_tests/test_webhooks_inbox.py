"""The webhook inbox `provider_events` on SQLite and PostgreSQL: idempotent storing, the
receiver's group commit, reading an audience's unprocessed events in id order, marking them
processed."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from newsletter_pipelines.state.events import (
    NewEvent,
    mark_processed,
    store_deliveries,
    store_events,
    unprocessed_events,
)
from newsletter_pipelines.state.schema import ensure_schema
from newsletter_pipelines.webhooks.inbox import InboxWriter


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    url = (
        f"sqlite:///{tmp_path / 'state.sqlite3'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    created = sa.create_engine(url)
    ensure_schema(created, upgrade=True)
    yield created
    created.dispose()


def event(n: int, audience: str = "mailchimp", key: str | None = None) -> NewEvent:
    return NewEvent(
        audience=audience,
        provider="mailchimp",
        type="unsubscribe",
        email=f"p{n}@example.com",
        payload={"type": "unsubscribe", "data": {"email": f"p{n}@example.com", "n": n}},
        dedupe_key=key or f"key-{audience}-{n}",
    )


def test_stores_each_event_once_and_reads_them_in_id_order(engine: sa.Engine) -> None:
    assert store_events(engine, [event(1), event(2), event(1), event(3, "other")]) == 3
    assert store_events(engine, [event(2), event(4)]) == 1
    assert store_events(engine, []) == 0
    pending = unprocessed_events(engine, "mailchimp")
    assert [e.email for e in pending] == ["p1@example.com", "p2@example.com", "p4@example.com"]
    assert [e.id for e in pending] == sorted(e.id for e in pending)
    first = pending[0]
    assert first.payload == {"type": "unsubscribe", "data": {"email": "p1@example.com", "n": 1}}
    assert (first.provider, first.type, first.processed_at) == ("mailchimp", "unsubscribe", None)
    assert first.received_at.tzinfo is not None
    assert [e.email for e in unprocessed_events(engine, "other")] == ["p3@example.com"]
    assert len(unprocessed_events(engine, "mailchimp", limit=2)) == 2


def test_marked_events_are_no_longer_unprocessed(engine: sa.Engine) -> None:
    store_events(engine, [event(1), event(2), event(3)])
    first, second, third = unprocessed_events(engine, "mailchimp")
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert mark_processed(engine, [first.id, third.id], now=at) == 2
    assert mark_processed(engine, [first.id], now=at) == 0  # already processed
    assert mark_processed(engine, []) == 0
    assert unprocessed_events(engine, "mailchimp") == [second]
    with engine.connect() as conn:
        stamps = conn.execute(
            sa.text("SELECT processed_at FROM provider_events WHERE id = :i"), {"i": first.id}
        )
        assert stamps.scalar_one() is not None
    # A redelivery of a processed event is still a duplicate.
    assert store_events(engine, [event(1)]) == 0


def test_a_run_marks_any_number_of_events(engine: sa.Engine) -> None:
    """More ids than SQLite takes parameters in one statement (32,766)."""
    store_events(engine, [event(1), event(2)])
    ids = [e.id for e in unprocessed_events(engine, "mailchimp")]
    assert mark_processed(engine, [*ids, *range(10**6, 10**6 + 40_000)]) == 2
    assert unprocessed_events(engine, "mailchimp") == []


def test_up_to_reads_only_the_events_up_to_that_id(engine: sa.Engine) -> None:
    store_events(engine, [event(n) for n in range(1, 6)])
    ids = [e.id for e in unprocessed_events(engine, "mailchimp")]
    assert [e.id for e in unprocessed_events(engine, "mailchimp", up_to=ids[2])] == ids[:3]
    assert unprocessed_events(engine, "mailchimp", up_to=ids[0] - 1) == []


def test_runs_of_consecutive_ids_mark_exactly_those_events(engine: sa.Engine) -> None:
    """Runs of consecutive ids are marked as ranges: an event between them, of this audience
    or another, processed or not, is left as it is."""
    store_events(engine, [event(n, "mailchimp" if n % 25 else "other") for n in range(1, 101)])
    mine = [e.id for e in unprocessed_events(engine, "mailchimp")]
    theirs = [e.id for e in unprocessed_events(engine, "other")]
    assert mark_processed(engine, mine[:3]) == 3  # processed before: not counted again
    left_out = {mine[10], mine[40], *mine[60:62]}
    marked = [i for i in reversed(mine) if i not in left_out]  # any order, with a duplicate
    assert mark_processed(engine, [*marked, marked[0]]) == len(marked) - 3
    assert [e.id for e in unprocessed_events(engine, "mailchimp")] == sorted(left_out)
    assert [e.id for e in unprocessed_events(engine, "other")] == theirs


def test_unicode_and_null_characters_survive_in_the_payload(engine: sa.Engine) -> None:
    odd = NewEvent(
        audience="brevo",
        provider="brevo",
        type="contact_updated",
        email="jürgen@example.de",
        payload={"content": [{"NACHNAME": "Groß\x00"}], "event": "contact_updated"},
        dedupe_key="odd",
    )
    assert store_events(engine, [odd]) == 1
    (stored,) = unprocessed_events(engine, "brevo")
    assert (stored.email, stored.payload) == (odd.email, odd.payload)


def test_concurrent_deliveries_share_commits_and_each_gets_its_own_count(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver's group commit: while one transaction runs, 49 deliveries arrive; the next
    transaction takes them all. Each delivery is answered with its own new events (an event
    in two deliveries counts for the first), and an event already stored counts for none."""
    store_events(engine, [event(0)])
    first_started = threading.Event()

    def slow_first(*args: Any, **kwargs: Any) -> list[int]:
        if not first_started.is_set():
            first_started.set()
            time.sleep(0.3)  # the first transaction holds the writer while others arrive
        return store_deliveries(*args, **kwargs)

    monkeypatch.setattr("newsletter_pipelines.webhooks.inbox.store_deliveries", slow_first)
    writer = InboxWriter(engine)

    async def deliver() -> list[int]:
        first = asyncio.create_task(writer.store([event(1)]))
        await asyncio.sleep(0.05)  # the first transaction runs
        rest = [
            asyncio.create_task(writer.store([event(n), event(n + 1000)])) for n in range(2, 51)
        ]
        rest.append(asyncio.create_task(writer.store([event(0), event(2)])))  # stored / also here
        return list(await asyncio.gather(first, *rest))

    counts = asyncio.run(deliver())
    assert counts == [1] + [2] * 49 + [0]
    assert writer.transactions == 2
    assert len(unprocessed_events(engine, "mailchimp")) == 1 + 1 + 49 * 2


def test_a_failed_group_commit_fails_every_delivery_in_it(engine: sa.Engine) -> None:
    writer = InboxWriter(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE provider_events"))

    async def deliver() -> list[BaseException | int]:
        calls = [writer.store([event(n)]) for n in range(3)]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(deliver())
    assert all(isinstance(r, sa.exc.SQLAlchemyError) for r in results)
