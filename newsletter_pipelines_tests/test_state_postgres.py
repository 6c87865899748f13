"""The state database (exclusions, ledger, outcome log) on a real PostgreSQL."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter_pipelines.state import columns
from newsletter_pipelines.state.exclusions import count_by_reason, record_eligibility
from newsletter_pipelines.state.ledger import (
    LEDGER_COLUMNS,
    LedgerColumns,
    OutcomeColumns,
    OutcomeRecord,
    ledger,
    ledger_rows,
    load_ledger,
    load_ledger_frame,
    load_ledger_frame_at,
    outcome_counts,
    outcomes,
    record,
)
from newsletter_pipelines.state.schema import ensure_schema
from newsletter_pipelines.sync.guards import check_count_drop
from newsletter_pipelines.sync.identity import Intent, LedgerRow, RowState

pytestmark = pytest.mark.postgres
OUTCOME_FIELDS = tuple(f.name for f in fields(OutcomeRecord))
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


def test_a_large_ledger_stored_out_of_key_order_loads_in_member_key_order(
    postgres_url: str,
) -> None:
    """The database is not asked to sort (its sort of a million rows took longer than sending
    them): rows it returns in storage order, here the reverse of key order, are sorted as
    Python sorts str."""
    engine = sa.create_engine(postgres_url)
    ensure_schema(engine, upgrade=True)
    numbers = [f"{n:05d}" for n in reversed(range(25_000))]  # past `ADBC_MIN_ROWS` too
    record(engine, "a", "run-1", [row(n) for n in numbers])
    with engine.begin() as conn:  # the planner then reads the table in storage order
        conn.exec_driver_sql("ANALYZE sync_ledger")
    keys = load_ledger_frame(engine, "a")["member_key"].tolist()
    assert keys == sorted(keys) and len(keys) == 25_000
    engine.dispose()


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
    """On PostgreSQL a ledger of `ADBC_MIN_ROWS` rows or more is read column-wise (ADBC's
    driver); what it reads is what the row-wise read through SQLAlchemy reads, a batch of rows at
    a time, and what it reads for fewer rows; a failed ADBC read falls back to it."""
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
    adbc: list[int] = []
    monkeypatch.setattr(columns, "_postgresql_table", lambda *a: adbc.append(1) or adbc_read(*a))
    few = load_ledger_frame(engine, "a")
    assert not adbc  # 8 rows: read row-wise
    monkeypatch.setattr(columns, "ADBC_MIN_ROWS", len(rows))
    column_wise = load_ledger_frame(engine, "a")
    assert adbc == [1]  # read through ADBC
    pd.testing.assert_frame_equal(column_wise, few)
    assert load_ledger_frame(engine, "nobody").empty
    assert adbc == [1]  # fewer rows than the least read through ADBC
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


def test_a_ledger_write_reads_the_rows_of_its_own_keys_only(postgres_url: str) -> None:
    """`record` finds each row it replaces, deletes or moves away from through the primary key:
    what a chunk reads does not grow with the ledger (its replacing `DELETE … member_key =
    ANY(:keys)` matched every row of the audience against the keys: 199 s of a million-contact
    first sync). Rows replaced keep nothing of their old selves."""
    engine = sa.create_engine(postgres_url, poolclass=sa.pool.StaticPool)  # one session
    ensure_schema(engine, upgrade=True)
    record(engine, "a", "run-1", [row(str(n), stable_id=f"s{n}") for n in range(20_000)])
    record(engine, "b", "run-1", [row(str(n)) for n in range(100)])
    synced_at = _synced_at(engine, "p0@example.de")
    read = _ledger_rows_read(engine)
    replaced = [row(str(n), RowState.REMOVED) for n in range(0, 20_000, 200)]
    moved = [row(f"m{n}", stable_id=f"s{n}", moved_from=f"p{n}@example.de") for n in (1, 2, 3)]
    deleted = [f"p{n}@example.de" for n in range(7, 20_000, 400)]
    record(engine, "a", "run-2", [*replaced, *moved], deleted=deleted)
    assert _ledger_rows_read(engine) - read < 500  # 100 + 3 + 50 rows; the ledger holds 20,100
    ledger = {r.member_key: r for r in load_ledger(engine, "a")}
    assert len(ledger) == 20_000 - 50 + 3 - 3
    assert ledger["p200@example.de"] == replaced[1]  # every column written, none kept
    assert "p1@example.de" not in ledger and ledger["pm1@example.de"] == moved[0]
    assert "p7@example.de" not in ledger and len(load_ledger(engine, "b")) == 100
    assert _synced_at(engine, "p0@example.de") > synced_at
    engine.dispose()


def _ledger_rows_read(engine: sa.Engine) -> int:
    """Rows of `sync_ledger` read by scans and index fetches so far (the session's counts
    flushed to the server's statistics first)."""
    with engine.begin() as conn:
        conn.exec_driver_sql("SELECT pg_stat_force_next_flush()")
    with engine.begin() as conn:
        conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        return int(
            conn.exec_driver_sql(
                "SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables "
                "WHERE relname = 'sync_ledger'"
            ).scalar_one()
        )


def _synced_at(engine: sa.Engine, key: str) -> datetime:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(ledger.c.last_synced_at).where(
                ledger.c.audience == "a", ledger.c.member_key == key
            )
        ).scalar_one()


ALL_KEYS = ("a@x.de", "b@x.de", "c@x.de", "d@x.de")
KEYS = st.sampled_from(ALL_KEYS)
WRITTEN = st.builds(
    LedgerRow,
    member_key=KEYS,
    email=KEYS,
    owner=st.none() | st.sampled_from("12"),
    provider_id=st.none() | st.just("id"),
    tags=st.frozensets(st.sampled_from(["CRM", "VIP"])),
    state=st.sampled_from(RowState),
    intent=st.none() | st.sampled_from(Intent),
    intent_key=st.none() | KEYS,
    stable_id=st.none() | st.sampled_from(["s1", "s2"]),
    moved_from=st.none() | KEYS,
)
CALLS = st.lists(
    st.tuples(
        st.sampled_from(["news", "other"]),
        st.lists(WRITTEN, max_size=4, unique_by=lambda r: r.member_key),
        st.lists(KEYS, max_size=3),  # deleted
        st.integers(0, 3),  # outcomes logged
    ),
    min_size=1,
    max_size=6,
)
Call = tuple[str, list[LedgerRow], list[str], int]


def test_record_stamps_rows_and_outcomes_with_the_moment_it_wrote_them(postgres_url: str) -> None:
    """The time of a write (sent as text by COPY on psycopg) is read back as that moment, the
    same in the ledger and the outcome log, with either PostgreSQL driver and on SQLite."""
    url = sa.engine.make_url(postgres_url)
    drivers = [url.set(drivername=f"postgresql+{d}") for d in ("psycopg", "psycopg2")]
    engines = [*map(sa.create_engine, drivers), sa.create_engine("sqlite://")]
    for n, engine in enumerate(engines):
        ensure_schema(engine, upgrade=True)
        before = datetime.now(UTC)
        record(engine, f"a{n}", f"run-{n}", [row("1")], logged=[OutcomeRecord("1", None, "a", "b")])
        after = datetime.now(UTC)
        with engine.connect() as conn:
            query = sa.select(ledger.c.last_synced_at).where(ledger.c.audience == f"a{n}")
            synced = conn.execute(query).scalar_one()
            query = sa.select(outcomes.c.recorded_at).where(outcomes.c.run_id == f"run-{n}")
            logged = conn.execute(query).scalar_one()
        engine.dispose()
        assert synced == logged
        assert before <= synced.replace(tzinfo=synced.tzinfo or UTC) <= after


def test_record_on_postgresql_writes_what_it_writes_on_sqlite(postgres_url: str) -> None:
    """Rows replaced by member key, `deleted` keys gone, a row moved away from removed when
    still the same member's (same stable id; none yet and an address change to the new key in
    flight), outcomes logged: on PostgreSQL (the upsert) as on SQLite (delete, then insert),
    and as a dict of rows by (audience, member key) has it; rows that moved from nowhere and
    outcomes given column-wise (`LedgerColumns`, `OutcomeColumns`) as given one by one; rows
    said to be `fresh` as any other, whether their keys are new or not."""
    no_fsync = {"options": "-c synchronous_commit=off"}
    engines = [sa.create_engine(postgres_url, connect_args=no_fsync), sa.create_engine("sqlite://")]
    for engine in engines:
        ensure_schema(engine, upgrade=True)

    @settings(max_examples=50, deadline=None)
    @given(calls=CALLS, columnwise=st.booleans(), fresh=st.booleans())
    def check(calls: list[Call], columnwise: bool, fresh: bool) -> None:
        for engine in engines:
            with engine.begin() as conn:
                conn.execute(ledger.delete())
                conn.execute(outcomes.delete())
        model: dict[tuple[str, str], LedgerRow] = {}
        for number, (audience, rows, deleted, logged) in enumerate(calls):
            outcome = [OutcomeRecord(str(n), None, "update", "updated") for n in range(logged)]
            given_rows: list[LedgerRow] | LedgerColumns = rows
            given_outcome: list[OutcomeRecord] | OutcomeColumns = outcome
            if columnwise and all(r.moved_from is None for r in rows):
                given_rows = LedgerColumns(
                    **{name: [getattr(r, name) for r in rows] for name in LEDGER_COLUMNS}
                )
                given_outcome = OutcomeColumns(
                    **{name: [getattr(o, name) for o in outcome] for name in OUTCOME_FIELDS}
                )
            for engine in engines:
                record(
                    engine,
                    audience,
                    f"run-{number}",
                    given_rows,
                    deleted=deleted,
                    logged=given_outcome,
                    fresh=fresh,
                )
            _modelled(model, audience, rows, deleted)
            for engine in engines:
                for name in ("news", "other"):
                    stored = ledger_rows(load_ledger_frame_at(engine, name, ALL_KEYS, ()))
                    assert stored == [r for (a, _), r in sorted(model.items()) if a == name]
                counts = {("update", "updated"): logged} if logged else {}
                assert outcome_counts(engine, f"run-{number}") == counts

    check()
    for engine in engines:
        engine.dispose()


def test_fresh_rows_are_copied_into_the_ledger_and_upserted_when_one_was_there(
    postgres_url: str,
) -> None:
    """Rows said to be `fresh` (a first sync's intents) go straight into the ledger, without
    the upsert; when one key was there after all, nothing of the straight copy is left and the
    upsert replaces that row, in the same transaction as the outcomes."""
    engine = sa.create_engine(postgres_url)
    ensure_schema(engine, upgrade=True)
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    first = [row(str(n), intent=Intent.CREATE, intent_key=f"p{n}@example.de") for n in range(3)]
    record(engine, "a", "run-1", first, fresh=True)
    assert not [s for s in statements if "ON CONFLICT" in s]
    assert load_ledger(engine, "a") == first
    statements.clear()
    again = [row("2", RowState.REMOVED), row("3")]  # p2 is there
    logged = [OutcomeRecord("2", "p2@example.de", "remove", "removed")]
    record(engine, "a", "run-2", again, logged=logged, fresh=True)
    assert [s for s in statements if "ON CONFLICT" in s]
    assert load_ledger(engine, "a") == [*first[:2], *again]
    assert outcome_counts(engine, "run-2") == {("remove", "removed"): 1}
    engine.dispose()


def _modelled(
    model: dict[tuple[str, str], LedgerRow],
    audience: str,
    rows: list[LedgerRow],
    deleted: list[str],
) -> None:
    """What `record` does, on a dict of rows."""
    for r in rows:
        old = model.get((audience, r.moved_from)) if r.moved_from is not None else None
        if old is not None and (
            (old.stable_id is not None and old.stable_id == r.stable_id)
            or (old.stable_id is None and old.intent_key == r.member_key)
        ):
            del model[audience, old.member_key]
    for key in {r.member_key for r in rows} | set(deleted):
        model.pop((audience, key), None)
    model.update(((audience, r.member_key), r) for r in rows)
