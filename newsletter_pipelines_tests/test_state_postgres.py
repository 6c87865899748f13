"""The state database (exclusions, ledger, outcome log) on a real PostgreSQL."""

from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa

from newsletter_pipelines.state import columns
from newsletter_pipelines.state.exclusions import count_by_reason, record_eligibility
from newsletter_pipelines.state.ledger import (
    OutcomeRecord,
    ledger_rows,
    load_ledger,
    load_ledger_frame,
    outcome_counts,
    record,
)
from newsletter_pipelines.state.schema import ensure_schema
from newsletter_pipelines.sync.guards import check_count_drop
from newsletter_pipelines.sync.identity import Intent, LedgerRow, RowState

pytestmark = pytest.mark.postgres
adbc_read = columns._postgresql_table


def row(n: str, state: RowState = RowState.SUBSCRIBED, **extra: object) -> LedgerRow:
    return LedgerRow(
        member_key=f"p{n}@example.de",
        email=f"p{n}@example.de",
        owner=n,
        provider_id=f"id{n}",
        tags=frozenset({"Käufer", "VIP"}),
        state=state,
        **extra,  # type: ignore[arg-type]
    )


def test_ledger_and_outcomes_round_trip(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    ensure_schema(engine, upgrade=True)
    record(
        engine,
        "mailchimp",
        "run-1",
        [row("1"), row("2")],
        logged=[
            OutcomeRecord("1", "p1@example.de", "create", "created"),
            OutcomeRecord(
                "2",
                "p2@example.de",
                "create",
                "refused",
                code="Invalid Resource",
                message="looks fake",
            ),
        ],
    )
    moving = row("2", RowState.UNSUBSCRIBED, intent=Intent.CHANGE_EMAIL, intent_key="n@x.de")
    record(engine, "mailchimp", "run-2", [moving])
    record(engine, "brevo", "run-2", [row("1")])
    ledger = {e.member_key: e for e in load_ledger(engine, "mailchimp")}
    assert set(ledger) == {"p1@example.de", "p2@example.de"}
    assert ledger["p2@example.de"] == moving  # replaced, not duplicated; every field kept
    assert ledger["p1@example.de"].tags == frozenset({"Käufer", "VIP"})
    assert len(load_ledger(engine, "brevo")) == 1
    record(engine, "mailchimp", "run-3", [], deleted=["p1@example.de"])
    assert [r.member_key for r in load_ledger(engine, "mailchimp")] == ["p2@example.de"]
    assert outcome_counts(engine, "run-1") == {("create", "created"): 1, ("create", "refused"): 1}


def test_ledger_loads_in_member_key_order(postgres_url: str) -> None:
    # without ORDER BY, PostgreSQL returns rows in storage order, which updates change
    engine = sa.create_engine(postgres_url)
    ensure_schema(engine, upgrade=True)
    record(engine, "a", "run-1", [row(n) for n in "93718"])
    record(engine, "a", "run-2", [row("3", RowState.REMOVED)])
    assert [r.owner for r in load_ledger(engine, "a")] == list("13789")


def test_exclusions_on_postgres_replace_previous_rows(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    ensure_schema(engine, upgrade=True)
    excluded = pd.DataFrame(
        {
            "contact_id": [1, 2],
            "reason": ["private", "invalid_email"],
            "email": [None, "a\x00b@x"],
            "detail": [None, "bad"],
        }
    )
    record_eligibility(engine, excluded, "run-1", lambda _: check_count_drop(None, 5, 0.2))
    record_eligibility(engine, excluded.iloc[1:], "run-2", lambda b: check_count_drop(b, 5, 0.2))
    assert count_by_reason(engine) == {"invalid_email": 1}


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_the_ledger_read_through_adbc_is_the_row_wise_one(
    postgres_url: str, driver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the ledger is read column-wise (ADBC's driver); what it reads is what the
    row-wise read through SQLAlchemy reads, a batch of rows at a time; a failed ADBC read falls
    back to it."""
    url = sa.engine.make_url(postgres_url).set(drivername=f"postgresql+{driver}")
    engine = sa.create_engine(url)
    ensure_schema(engine, upgrade=True)
    rows = [
        row(str(n), RowState.OPTED_OUT if n % 3 else RowState.SUBSCRIBED, stable_id=f"s{n}")
        for n in range(7)
    ]
    rows.append(row("ä", intent=Intent.CREATE, intent_key="k", refusal_code="x" * 300))
    record(engine, "a", "run-1", rows)
    record(engine, "b", "run-1", [row("other")])
    adbc = [columns._postgresql_table]
    monkeypatch.setattr(columns, "_postgresql_table", lambda *a: adbc.append(1) or adbc[0](*a))
    column_wise = load_ledger_frame(engine, "a")
    assert len(adbc) == 2  # read through ADBC
    assert load_ledger_frame(engine, "nobody").empty
    monkeypatch.setattr(columns, "_postgresql_table", lambda *_: None)  # as if it failed
    monkeypatch.setattr(columns, "_FETCH_ROWS", 3)
    row_wise = load_ledger_frame(engine, "a")
    pd.testing.assert_frame_equal(column_wise, row_wise)
    assert ledger_rows(column_wise) == sorted(rows, key=lambda r: r.member_key)
    engine.dispose()


def test_a_failed_adbc_read_of_the_ledger_is_read_row_wise(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = sa.create_engine(postgres_url)
    ensure_schema(engine, upgrade=True)
    record(engine, "a", "run-1", [row("1")])
    wrong = sa.engine.make_url(postgres_url).set(database="no_such_database_here")
    monkeypatch.setattr(columns, "_postgresql_table", lambda _url, query: adbc_read(wrong, query))
    assert [r.owner for r in load_ledger(engine, "a")] == ["1"]
    engine.dispose()


def test_ledger_writes_are_planned_for_their_keys_every_time(postgres_url: str) -> None:
    """psycopg prepares a statement the fifth time it runs; PostgreSQL may then run the
    statement's generic plan, made for any array of keys, which for the replacing delete was a
    scan matching every ledger row against every key (30,000 creates in chunks of 1,500: 19 s
    of ledger writes instead of 3). `record` has each execution planned for its keys: the
    session's prepared statements never use a generic plan."""
    engine = sa.create_engine(postgres_url, poolclass=sa.pool.StaticPool)  # one session
    ensure_schema(engine, upgrade=True)
    for chunk in range(12):
        rows = [row(f"{chunk}.{i}", intent=Intent.CREATE) for i in range(1500)]
        record(engine, "a", "run", rows)
        record(engine, "a", "run", [r.moved(intent=None) for r in rows])
    with engine.connect() as conn:
        prepared = conn.exec_driver_sql(
            "SELECT count(*), coalesce(sum(generic_plans), 0) FROM pg_prepared_statements "
            "WHERE starts_with(statement, 'DELETE FROM sync_ledger ')"
        ).one()
    engine.dispose()
    assert prepared[0] > 0  # psycopg did prepare them
    assert prepared[1] == 0
