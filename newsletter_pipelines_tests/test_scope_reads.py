"""The reads of a run about a few addresses (`sync.scope`), on SQLite and PostgreSQL: the ledger
and the CRM contacts at many keys (past `LOOKUP_MAX`: everything read in one pass and matched
in Python) give the same frame as the lookups in SQL, and `close_scope`, which reads only what
is new in each round and adds it to what earlier rounds found, gives the same scope as reading
everything again in every round."""

from __future__ import annotations

import shutil
from collections.abc import Collection, Sequence
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from newsletter_pipelines.crm import reader
from newsletter_pipelines.crm.loader import load_demo
from newsletter_pipelines.crm.reader import read_contacts, read_contacts_at
from newsletter_pipelines.providers.base import Member, MemberStatus
from newsletter_pipelines.settings import CrmSchema
from newsletter_pipelines.state import ledger as ledger_module
from newsletter_pipelines.state.ledger import load_ledger_frame, load_ledger_frame_at, record
from newsletter_pipelines.state.schema import ensure_schema
from newsletter_pipelines.sync import scope as scope_module
from newsletter_pipelines.sync.email_address import raw_match_key
from newsletter_pipelines.sync.identity import Intent, LedgerRow, RowState
from newsletter_pipelines.sync.scope import (
    MAX_ROUNDS,
    ContactsAt,
    LedgerAt,
    MembersAt,
    Scope,
    close_scope,
)

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
    ensure_schema(engine, upgrade=True)
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


def reference_scope(
    keys: Collection[str],
    contacts_at: ContactsAt,
    ledger_at: LedgerAt,
    members_at: MembersAt,
    contact_ids: Collection[str] = (),
) -> Scope:
    """`close_scope` as it was: every round reads the ledger and the contacts at everything
    found so far."""
    found_keys, ids, stable_ids = frozenset(keys), frozenset(contact_ids), frozenset[str]()
    contacts = ledger = pd.DataFrame()
    members: dict[str, Member | None] = {}
    for _ in range(MAX_ROUNDS):
        ledger = ledger_at(found_keys, ids, stable_ids)
        owners = frozenset(ledger["owner"].dropna().astype(str))
        contacts = contacts_at(found_keys, ids | owners)
        wider_keys = found_keys | frozenset(ledger["member_key"]) | scope_module._keys_of(contacts)
        wider_ids = ids | owners | frozenset(contacts["contact_id"].astype(str))
        unread = sorted(wider_keys - members.keys())
        members.update(dict.fromkeys(unread))
        members.update({raw_match_key(m.email) or m.email: m for m in members_at(unread)})
        wider_stable = frozenset(m.stable_id for m in members.values() if m and m.stable_id)
        if (wider_keys, wider_ids, wider_stable) == (found_keys, ids, stable_ids):
            return Scope(found_keys, ids, contacts, ledger, scope_module._snapshot(members), True)
        found_keys, ids, stable_ids = wider_keys, wider_ids, wider_stable
    return Scope(found_keys, ids, contacts, ledger, scope_module.snapshot_frame([]), False)


def assert_same_scope(found: Scope, expected: Scope) -> None:
    assert (found.keys, found.contact_ids, found.closed) == (
        expected.keys,
        expected.contact_ids,
        expected.closed,
    )
    pd.testing.assert_frame_equal(found.contacts, expected.contacts)
    pd.testing.assert_frame_equal(found.ledger, expected.ledger)
    pd.testing.assert_frame_equal(found.snapshot, expected.snapshot)


class Counted:
    """Calls of a read, counted (to show the scope took several rounds)."""

    def __init__(self, read: ContactsAt | LedgerAt) -> None:
        self.read, self.calls = read, 0

    def __call__(self, *args: frozenset[str]) -> pd.DataFrame:
        self.calls += 1
        return self.read(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize("lookup_max", [5_000, 3])
def test_a_scope_read_round_by_round_is_the_scope_read_whole_in_every_round(
    database: str, lookup_max: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ownership chains (a ledger row at one contact's address owned by the next contact) and
    members known by their stable id under another address widen the scope over several rounds;
    with `lookup_max` 3 the first round reads everything in one pass and later rounds look up."""
    monkeypatch.setattr(reader, "LOOKUP_MAX", lookup_max)
    monkeypatch.setattr(ledger_module, "LOOKUP_MAX", lookup_max)
    engine = sa.create_engine(database)
    schema = CrmSchema()
    everyone = read_contacts(engine, schema)
    email_of = {
        str(cid): raw_match_key(email)
        for cid, email in zip(everyone["contact_id"], everyone["email"], strict=True)
        if raw_match_key(email)
    }
    ids = sorted(email_of, key=int)
    rows = []
    for n in range(0, 60, 6):  # chains of six: the row at contact i's address owned by i + 1
        for i in range(n, n + 5):
            rows.append(ledger_row(i, email_of[ids[i]], ids[i + 1], f"s{i}"))
    rows.append(ledger_row(900, "moved-away@example.org", ids[300], "moved"))
    rows += [ledger_row(1_000 + i, email_of[ids[i]], ids[i], None) for i in range(400, 700)]
    ensure_schema(engine, upgrade=True)
    record(engine, AUDIENCE, "run", rows)
    members = {
        email_of[ids[i]]: Member(
            provider_id=f"p{i}",
            email=email_of[ids[i]],
            status=MemberStatus.SUBSCRIBED,
            stable_id="moved" if i == 4 else f"s{i}",
        )
        for i in range(0, 700, 2)
    }

    def members_at(emails: Sequence[str]) -> list[Member]:
        return [members[e] for e in emails if e in members]

    def contacts_at(keys: frozenset[str], contact_ids: frozenset[str]) -> pd.DataFrame:
        return read_contacts_at(engine, schema, keys, contact_ids)

    def ledger_at(keys: frozenset[str], owners: frozenset[str], stable: frozenset[str]):
        return load_ledger_frame_at(engine, AUDIENCE, keys, owners, stable)

    for start_keys, start_ids in (
        ([email_of[ids[0]], email_of[ids[12]]], ()),
        ([email_of[ids[i]] for i in range(399, 460)] + ["nobody@example.org"], ("6", "x")),
        ((), ()),
    ):
        counted = Counted(ledger_at)
        found = close_scope(start_keys, contacts_at, counted, members_at, start_ids)  # type: ignore[arg-type]
        expected = reference_scope(start_keys, contacts_at, ledger_at, members_at, start_ids)
        assert_same_scope(found, expected)
        if start_keys:
            assert counted.calls >= 3 and len(found.contacts) > 3 and found.closed


def test_contacts_with_text_ids_are_read_whole_again_as_before() -> None:
    """The union cannot order text ids as the database does (its collation): the contacts are
    read again at everything, as every round did."""
    crm = pd.DataFrame(
        {
            "contact_id": ["b", "a", "c", "d"],
            "email": ["b@x.de", "a@x.de", "c@x.de", "d@x.de"],
            "tags": [(), ("T",), (), ()],
        }
    )
    ledger = pd.DataFrame(
        {"member_key": ["a@x.de", "c@x.de"], "owner": ["c", "d"], "stable_id": [None, None]}
    )

    def contacts_at(keys: frozenset[str], ids: frozenset[str]) -> pd.DataFrame:
        found = crm[crm["contact_id"].isin(ids) | crm["email"].isin(keys)]
        return found.sort_values("contact_id").reset_index(drop=True)

    def ledger_at(keys: frozenset[str], owners: frozenset[str], stable: frozenset[str]):
        return ledger[ledger["member_key"].isin(keys) | ledger["owner"].isin(owners)].reset_index(
            drop=True
        )

    found = close_scope(["a@x.de"], contacts_at, ledger_at, lambda emails: [])
    expected = reference_scope(["a@x.de"], contacts_at, ledger_at, lambda emails: [])
    assert_same_scope(found, expected)
    assert found.contacts["contact_id"].tolist() == ["a", "c", "d"]


def test_contacts_added_round_by_round_have_the_column_types_of_one_read() -> None:
    """The frame of one read infers its column types from all its rows (integers with a
    missing value: floats; a missing time among times: NaT): the union infers them likewise,
    not from each round's part."""
    raw = [  # (id, email, is_private, updated_at) as a driver returns them
        (1, "a@x.de", None, None),
        (2, "b@x.de", None, None),
        (3, "c@x.de", 1, pd.Timestamp("2026-12-01 09:00").to_pydatetime()),
    ]
    columns = ["contact_id", "email", "is_private", "updated_at"]
    ledger = pd.DataFrame(
        {"member_key": ["a@x.de", "b@x.de"], "owner": ["2", "3"], "stable_id": [None, None]}
    )

    def contacts_at(keys: frozenset[str], ids: frozenset[str]) -> pd.DataFrame:
        rows = [r for r in raw if str(r[0]) in ids or r[1] in keys]
        frame = pd.DataFrame.from_records(rows, columns=columns)
        frame["tags"] = [() for _ in rows]
        return frame

    def ledger_at(keys: frozenset[str], owners: frozenset[str], stable: frozenset[str]):
        return ledger[ledger["member_key"].isin(keys) | ledger["owner"].isin(owners)].reset_index(
            drop=True
        )

    found = close_scope(["a@x.de"], contacts_at, ledger_at, lambda emails: [])
    expected = reference_scope(["a@x.de"], contacts_at, ledger_at, lambda emails: [])
    assert_same_scope(found, expected)
    assert found.contacts["contact_id"].tolist() == [1, 2, 3]
    assert found.contacts["is_private"].dtype == "float64"
