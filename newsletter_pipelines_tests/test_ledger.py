"""The ledger table on SQLite and PostgreSQL: a ledger of the layout before `stable_id`,
`provider_changed_at` and `unimported_opt_out` gets the columns from the migrations, and a row
moved by an address change at the provider replaces its old row."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from newsletter_pipelines.state.ledger import load_ledger, load_ledger_frame_at, record
from newsletter_pipelines.state.schema import ensure_schema, head_revision, upgrade
from newsletter_pipelines.sync.identity import LedgerRow, RowState
from newsletter_pipelines_tests.test_state_migrations import LATER_COLUMNS, old_ledger


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> sa.Engine:
    if request.param == "postgres":
        return sa.create_engine(request.getfixturevalue("postgres_url"))
    return sa.create_engine(f"sqlite:///{tmp_path / 'state.sqlite3'}")


def row(key: str, stable_id: str | None = None, **extra: object) -> LedgerRow:
    return LedgerRow(
        member_key=key,
        email=key,
        owner="1",
        provider_id=f"id-{key}",
        tags=frozenset({"CRM"}),
        state=RowState.SUBSCRIBED,
        stable_id=stable_id,
        **extra,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("added", [LATER_COLUMNS, LATER_COLUMNS[1:], LATER_COLUMNS[2:]])
def test_a_ledger_of_an_older_layout_gets_the_columns_and_keeps_its_rows(
    engine: sa.Engine, added: tuple[str, ...]
) -> None:
    stored = old_ledger(engine, added)
    ensure_schema(engine, upgrade=True)
    assert upgrade(engine) == head_revision()  # once there, the columns are not added again
    assert load_ledger(engine, "a") == [stored]
    seen = row("x@example.de", "c1", provider_changed_at="2026-12-03T10:00:00+00:00").moved(
        state=RowState.OPTED_OUT, unimported_opt_out="unsubscribed"
    )
    record(engine, "a", "run", [seen])
    assert load_ledger(engine, "a") == [seen]


def test_a_moved_row_replaces_the_row_of_the_same_member_at_its_old_address(
    engine: sa.Engine,
) -> None:
    ensure_schema(engine, upgrade=True)
    record(engine, "a", "run", [row("old@example.de", "c1"), row("other@example.de", "c2")])
    moved = row("new@example.de", "c1", moved_from="old@example.de")
    record(engine, "a", "run", [moved])
    assert [r.member_key for r in load_ledger(engine, "a")] == [
        "new@example.de",
        "other@example.de",
    ]
    # a row of another member at the old address (created since) stays
    record(engine, "a", "run", [row("old@example.de", None)])
    record(engine, "a", "run", [moved])
    assert len(load_ledger(engine, "a")) == 3


def test_the_rows_of_a_few_addresses_owners_and_members(engine: sa.Engine) -> None:
    ensure_schema(engine, upgrade=True)
    rows = [
        row("a@example.de", "s1"),
        row("b@example.de", "s2").moved(owner="7"),
        row("c@example.de", "s3"),
        row("d@example.de"),
    ]
    record(engine, "news", "run", rows)
    record(engine, "other", "run", [row("c@example.de", "s3")])
    found = load_ledger_frame_at(engine, "news", {"a@example.de"}, {"7"}, {"s3"})
    assert found["member_key"].tolist() == ["a@example.de", "b@example.de", "c@example.de"]
    assert load_ledger_frame_at(engine, "news", set(), set()).empty
