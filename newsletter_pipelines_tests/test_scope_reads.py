"""The reads of a run about a few addresses (`sync.scope`), on SQLite and PostgreSQL: the ledger
and the CRM contacts at many keys (past `LOOKUP_MAX`: everything read in one pass and matched
in Python) give the same frame as the lookups in SQL."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from newsletter_pipelines.crm import reader
from newsletter_pipelines.crm.loader import load_demo
from newsletter_pipelines.crm.reader import read_contacts, read_contacts_at
from newsletter_pipelines.settings import CrmSchema
from newsletter_pipelines.state import ledger as ledger_module
from newsletter_pipelines.state.ledger import (
    create_tables,
    load_ledger_frame,
    load_ledger_frame_at,
    record,
)
from newsletter_pipelines.sync.email_address import raw_match_key
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


@pytest.mark.parametrize("selection", ["few", "many"])
def test_contacts_read_in_one_pass_are_those_looked_up(
    database: str, selection: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every contact and every tag row read at once (past `LOOKUP_MAX`), or looked up by
    address and id in SQL: the same frame, tags included."""
    engine = sa.create_engine(database)
    schema = CrmSchema()
    everyone = read_contacts(engine, schema)
    keys = sorted({k for k in map(raw_match_key, everyone["email"]) if k})
    if selection == "few":
        wanted_keys, wanted_ids = frozenset(keys[:40]), frozenset({"1", "2", "17", "x"})
    else:
        wanted_keys = frozenset(keys[::2]) | {"nobody@example.org"}
        wanted_ids = frozenset(map(str, range(1, 3_000, 3))) | {"x"}
    frames = {}
    for lookup_max in (0, 100_000):
        monkeypatch.setattr(reader, "LOOKUP_MAX", lookup_max)
        frames[lookup_max] = read_contacts_at(engine, schema, wanted_keys, wanted_ids)
    pd.testing.assert_frame_equal(frames[0], frames[100_000])
    assert len(frames[0]) >= len(wanted_keys) - 1
    assert any(frames[0]["tags"].map(len) > 0)
    expected = everyone[
        everyone["contact_id"].astype(str).isin(wanted_ids)
        | everyone["email"].map(raw_match_key).isin(wanted_keys)
    ].reset_index(drop=True)
    # (a column of the whole frame holds missing values some of these rows do not)
    pd.testing.assert_frame_equal(frames[0], expected, check_dtype=False)
