"""The reads of a run about a few addresses (`sync.scope`), on SQLite and PostgreSQL: the ledger
at many keys, owners and stable ids (past `LOOKUP_MAX`: the audience's whole ledger read in one
pass and matched in Python) gives the same frame as the lookups in SQL."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from newsletter_pipelines.crm.loader import load_demo
from newsletter_pipelines.state import ledger as ledger_module
from newsletter_pipelines.state.ledger import (
    create_tables,
    load_ledger_frame,
    load_ledger_frame_at,
    record,
)
from newsletter_pipelines.sync.identity import Intent, LedgerRow, RowState

AUDIENCE = "news"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, demo_crm_file: Path, tmp_path: Path) -> str:
    """The demo CRM and an empty state database in one database (SQLite file or PostgreSQL)."""
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        load_demo(url, Path(__file__).parent.parent / "data")
        return url
    path = tmp_path / "crm.sqlite3"
    shutil.copy(demo_crm_file, path)
    return f"sqlite:///{path}"


def ledger_row(n: int, key: str, owner: str | None, stable_id: str | None) -> LedgerRow:
    """Rows that differ in every column, some columns None."""
    return LedgerRow(
        member_key=key,
        email=key.upper() if n % 3 == 0 else key,
        owner=owner,
        provider_id=f"p{n}" if n % 4 else None,
        tags=frozenset({"CRM", f"T{n % 5}"}) if n % 2 else frozenset(),
        state=RowState.SUBSCRIBED if n % 2 else RowState.UNSUBSCRIBED,
        refusal_code="Forgotten Email Not Subscribed" if n % 7 == 0 else None,
        refusal_key=f"r{n}" if n % 7 == 0 else None,
        intent=Intent.UPDATE if n % 11 == 0 else None,
        intent_key=f"i{n}" if n % 11 == 0 else None,
        stable_id=stable_id,
        provider_changed_at="2026-12-03T10:00:00+00:00" if n % 5 == 0 else None,
    )


def fill_ledger(engine: sa.Engine, count: int) -> None:
    """`count` rows of the audience (owners 1..count, every tenth without one; stable ids on
    two of three) and a few of another audience at the same keys."""
    create_tables(engine)
    rows = [
        ledger_row(
            n, f"m{n:05d}@example.org", str(n) if n % 10 else None, f"s{n}" if n % 3 else None
        )
        for n in range(count)
    ]
    record(engine, AUDIENCE, "run", rows)
    record(engine, "other", "run", rows[:50])


@pytest.mark.parametrize(
    "selection",
    [
        "few",  # a few of each, some matching nothing
        "many",  # more keys, owners and stable ids than an IN list holds (SQLite: several)
        "none",
    ],
)
def test_the_ledger_at_many_keys_is_read_in_one_pass_with_the_same_frame(
    database: str, selection: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = sa.create_engine(database)
    fill_ledger(engine, 1_500)
    keys: set[str] = set()
    owners: set[str] = set()
    stable: set[str] = set()
    if selection == "few":
        keys, owners, stable = {"m00003@example.org", "nobody@example.org"}, {"7", "x"}, {"s8"}
    elif selection == "many":
        keys = {f"m{n:05d}@example.org" for n in range(0, 1_500, 2)} | {"nobody@example.org"}
        owners = {str(n) for n in range(1, 1_400, 3)} | {"x"}
        stable = {f"s{n}" for n in range(700, 1_600)}
    frames = {}
    for lookup_max in (0, 10_000):  # one pass over the audience; lookups in SQL
        monkeypatch.setattr(ledger_module, "LOOKUP_MAX", lookup_max)
        frames[lookup_max] = load_ledger_frame_at(engine, AUDIENCE, keys, owners, stable)
    pd.testing.assert_frame_equal(frames[0], frames[10_000])
    everything = load_ledger_frame(engine, AUDIENCE)
    expected = everything[
        everything["member_key"].isin(keys)
        | everything["owner"].isin(owners)
        | everything["stable_id"].isin(stable)
    ].reset_index(drop=True)
    pd.testing.assert_frame_equal(frames[0], expected)
    assert frames[0].empty == (selection == "none")
    assert (frames[0]["member_key"].tolist() == sorted(frames[0]["member_key"])) is True
