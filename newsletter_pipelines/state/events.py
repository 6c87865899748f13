"""Table `provider_events`: the durable inbox of provider webhook events.

The webhook receiver commits every accepted event here before it answers 2xx; whatever applies
the events later reads an audience's unprocessed events in `id` order and marks them processed.
Deliveries are at-least-once: `dedupe_key` is unique and a stored event is never stored again.

    SELECT provider, type, count(*) FROM provider_events WHERE processed_at IS NULL GROUP BY 1, 2;
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from newsletter_pipelines.db import matching

metadata = sa.MetaData()
_payload_json = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode  # one, reused

provider_events = sa.Table(
    "provider_events",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("audience", sa.String(64), nullable=False),
    sa.Column("provider", sa.String(16), nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("email", sa.Text),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("dedupe_key", sa.String(64), nullable=False, unique=True),
    sa.Column("processed_at", sa.DateTime(timezone=True)),
    sa.Index("ix_provider_events_audience_processed", "audience", "processed_at", "id"),
)


@dataclass(frozen=True)
class NewEvent:
    """An event as received: `payload` is the provider's event, `dedupe_key` its identity."""

    audience: str
    provider: str
    type: str
    email: str | None
    payload: dict[str, Any]
    dedupe_key: str


@dataclass(frozen=True)
class StoredEvent:
    """A row of `provider_events`."""

    id: int
    audience: str
    provider: str
    type: str
    email: str | None
    payload: dict[str, Any]
    received_at: datetime
    dedupe_key: str
    processed_at: datetime | None


def store_events(
    engine: sa.Engine, events: Sequence[NewEvent], *, now: datetime | None = None
) -> int:
    """Insert the events whose `dedupe_key` is not stored yet, in one transaction; returns how
    many were new (duplicates, also within `events`, are skipped)."""
    return store_deliveries(engine, [events], now=now)[0]


def store_deliveries(
    engine: sa.Engine, deliveries: Sequence[Sequence[NewEvent]], *, now: datetime | None = None
) -> list[int]:
    """Insert the events of several deliveries in one transaction (a group commit); returns,
    per delivery, how many of its events were new (an event in two deliveries counts for the
    first)."""
    first: dict[str, int] = {}
    received_at = now or datetime.now(UTC)
    rows = []
    for index, events in enumerate(deliveries):
        for e in events:
            if e.dedupe_key in first:
                continue
            first[e.dedupe_key] = index
            rows.append(
                {
                    "audience": e.audience,
                    "provider": e.provider,
                    "type": e.type,
                    "email": e.email,
                    "payload": _payload_json(e.payload),
                    "received_at": received_at,
                    "dedupe_key": e.dedupe_key,
                }
            )
    counts = [0] * len(deliveries)
    if not rows:
        return counts
    with engine.begin() as conn:
        statement = _insert_ignoring_duplicates(conn.dialect.name)
        for (key,) in conn.execute(statement, rows).all():
            counts[first[key]] += 1
    return counts


def unprocessed_events(
    engine: sa.Engine, audience: str, *, limit: int | None = None, up_to: int | None = None
) -> list[StoredEvent]:
    """The audience's events not processed yet (with `up_to`: those whose `id` is at most
    that), oldest (lowest `id`) first."""
    columns = provider_events.c
    query = (
        sa.select(provider_events)
        .where(columns.audience == audience, columns.processed_at.is_(None))
        .order_by(columns.id)
        .limit(limit)
    )
    if up_to is not None:
        query = query.where(columns.id <= up_to)
    with engine.connect() as conn:
        rows = conn.execute(query).all()  # fetched at once: iterating fetches row by row
    return [_stored(row) for row in rows]


def pending_by_audience(engine: sa.Engine) -> dict[str, int]:
    """The highest id of each audience's unprocessed events (one indexed query)."""
    query = (
        sa.select(provider_events.c.audience, sa.func.max(provider_events.c.id))
        .where(provider_events.c.processed_at.is_(None))
        .group_by(provider_events.c.audience)
    )
    with engine.connect() as conn:
        return {audience: int(last) for audience, last in conn.execute(query)}


def mark_processed(engine: sa.Engine, ids: Sequence[int], *, now: datetime | None = None) -> int:
    """Set `processed_at` on the given events not processed yet; returns how many changed."""
    if not ids:
        return 0
    unprocessed = sa.update(provider_events).where(provider_events.c.processed_at.is_(None))
    stamped = unprocessed.values(processed_at=now or datetime.now(UTC))
    runs, single = _runs(ids)
    with engine.begin() as conn:  # a batch of any size: IN lists of `db.IN_BATCH` on SQLite
        changed = sum(
            conn.execute(stamped.where(provider_events.c.id.between(first, last))).rowcount
            for first, last in runs
        )
        return changed + sum(
            conn.execute(stamped.where(condition)).rowcount
            for condition in matching(provider_events.c.id, single, conn.dialect)
        )


RUN_MIN = 16
"""Consecutive ids from which `mark_processed` marks them as one range (exactly those ids)."""


def _runs(ids: Sequence[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """The distinct ids as (first, last) runs of at least `RUN_MIN` consecutive ids, and the
    others one by one: an audience's unprocessed events are mostly consecutive ids."""
    runs: list[tuple[int, int]] = []
    single: list[int] = []
    ordered = sorted(set(ids))
    start = 0
    for end in range(1, len(ordered) + 1):
        if end == len(ordered) or ordered[end] != ordered[end - 1] + 1:
            if end - start >= RUN_MIN:
                runs.append((ordered[start], ordered[end - 1]))
            else:
                single += ordered[start:end]
            start = end
    return runs, single


def _insert_ignoring_duplicates(dialect: str) -> sa.Insert:
    """INSERT … ON CONFLICT (dedupe_key) DO NOTHING RETURNING dedupe_key, for SQLite and
    PostgreSQL."""
    if dialect == "postgresql":
        insert = postgresql.insert(provider_events)
    elif dialect == "sqlite":
        insert = sqlite.insert(provider_events)
    else:
        raise NotImplementedError(f"provider_events supports SQLite and PostgreSQL, not {dialect}")
    return insert.on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(
        provider_events.c.dedupe_key
    )


def _stored(row: sa.Row[Any]) -> StoredEvent:
    """A row of `provider_events` (its columns in table order)."""
    id_, audience, provider, kind, email, payload, received_at, dedupe_key, processed_at = row
    return StoredEvent(
        id=id_,
        audience=audience,
        provider=provider,
        type=kind,
        email=email,
        payload=json.loads(payload),
        received_at=_utc(received_at),
        dedupe_key=dedupe_key,
        processed_at=None if processed_at is None else _utc(processed_at),
    )


def _utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes; they were written in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
