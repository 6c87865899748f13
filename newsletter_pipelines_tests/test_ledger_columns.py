"""The ledger read column by column (ADBC into Arrow) and the bulk pass over it agree with the
row-wise read and with the rules alone."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from newsletter_pipelines.providers.base import Member
from newsletter_pipelines.state import columns
from newsletter_pipelines.state.columns import TEXT, text_frame, text_rows
from newsletter_pipelines.state.ledger import (
    LEDGER_COLUMNS,
    ledger_rows,
    load_ledger,
    load_ledger_frame,
    record,
)
from newsletter_pipelines.state.schema import ensure_schema
from newsletter_pipelines.sync.created import split_created
from newsletter_pipelines.sync.eligibility import EXCLUDED_COLUMNS
from newsletter_pipelines.sync.event_import import confirmed_deletions
from newsletter_pipelines.sync.identity import Intent, LedgerRow, RowState
from newsletter_pipelines.sync.inputs import (
    SNAPSHOT_COLUMNS,
    actual_members,
    build_diff,
    crm_exclusions,
    desired_contacts,
    snapshot_frame,
)
from newsletter_pipelines.sync.rules import Context, reconcile
from newsletter_pipelines.sync.scope import Scope
from newsletter_pipelines.sync.settled import split_settled
from newsletter_pipelines.sync.tags import TAG_STYLES
from newsletter_pipelines_tests.world import as_the_diff_reads_it, by_key

TEXTS = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)
MAYBE = st.none() | TEXTS

LEDGER_ROWS = st.builds(
    LedgerRow,
    member_key=TEXTS,
    email=TEXTS,
    owner=MAYBE,
    provider_id=MAYBE,
    tags=st.frozensets(TEXTS, max_size=3),
    state=st.sampled_from(RowState),
    refusal_code=MAYBE,
    refusal_key=MAYBE,
    intent=st.none() | st.sampled_from(Intent),
    intent_key=MAYBE,
    stable_id=MAYBE,
    provider_changed_at=MAYBE,
    unimported_opt_out=MAYBE,
)


def _stored(folder: Path, rows: list[LedgerRow]) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{folder / 'state.sqlite3'}")
    ensure_schema(engine, upgrade=True)
    record(engine, "a", "run", rows)
    record(engine, "b", "run", rows[:1])  # another audience: not read
    return engine


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LEDGER_ROWS, max_size=25, unique_by=lambda r: r.member_key))
def test_the_column_wise_ledger_read_is_the_row_wise_one(
    rows: list[LedgerRow],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        engine = _stored(Path(folder), rows)
        frame = load_ledger_frame(engine, "a")
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(columns, "sqlite_file", lambda _: None)  # through SQLAlchemy
            row_wise = load_ledger_frame(engine, "a")
        engine.dispose()
    pd.testing.assert_frame_equal(frame, row_wise)
    assert list(frame.columns) == list(LEDGER_COLUMNS)
    assert (frame.dtypes == TEXT).all()
    assert ledger_rows(frame) == sorted(rows, key=lambda r: r.member_key)


def test_a_column_null_in_its_first_thousands_of_rows_is_read(tmp_path: Path) -> None:
    """The driver infers a column's type from its batch: one batch for the whole result."""
    rows = [
        LedgerRow(
            member_key=f"m{n:05d}@example.org",
            email=f"m{n:05d}@example.org",
            owner=str(n),
            provider_id=None,
            tags=frozenset(),
            state=RowState.SUBSCRIBED,
            refusal_code="Forgotten Email Not Subscribed" if n >= 4_000 else None,
        )
        for n in range(4_100)
    ]
    engine = _stored(tmp_path, rows)
    assert load_ledger(engine, "a") == rows
    assert load_ledger_frame(engine, "nobody").empty


def test_an_in_memory_database_is_read_through_sqlalchemy() -> None:
    engine = sa.create_engine("sqlite://")
    ensure_schema(engine, upgrade=True)
    row = LedgerRow(
        member_key="a@b.de", email="A@b.de", owner="1", provider_id="p", tags=frozenset("x"),
        state=RowState.OPTED_OUT, unimported_opt_out="unsubscribed",
    )  # fmt: skip
    record(engine, "a", "run", [row])
    assert load_ledger(engine, "a") == [row]


# --- the bulk pass over a column-wise ledger decides what the rules alone decide -------------

KEYS = ["a@x.de", "b@x.de", "c@x.de", "d@x.de"]
EMAILS = st.sampled_from([*KEYS, "A@x.de", "b@X.de", "ä@x.de", "Ä@x.de"])
NAMES = st.sampled_from(["Anna", "Ben", ""])
TAG_SETS = st.sampled_from([(), ("Käufer",), ("VIP", "Käufer"), ("vip",)])


def _mostly(draw: st.DrawFn, usual: object, *others: object) -> object:
    """`usual` seven times in eight, else one of `others`."""
    return draw(st.sampled_from([usual] * 7 * len(others) + list(others)))


@st.composite
def worlds(draw: st.DrawFn) -> tuple[str, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A provider, eligible contacts, a snapshot and a ledger frame that mostly agree."""
    provider = draw(st.sampled_from(["mailchimp", "brevo"]))
    system = ("CRM",) if provider == "mailchimp" else ()
    emails = draw(st.lists(EMAILS, max_size=5, unique_by=str.lower))  # eligibility dedups
    text_ids = draw(st.booleans())
    eligible = pd.DataFrame(
        {
            "contact_id": [str(n) if text_ids else n for n in range(1, len(emails) + 1)],
            "email": emails,
            "salutation": [draw(NAMES) for _ in emails],
            "first_name": [draw(NAMES) for _ in emails],
            "last_name": [draw(NAMES) for _ in emails],
            "updated_at": pd.Timestamp("2025-06-01", tz="UTC"),
        }
    )
    eligible["email_key"] = [e.lower() for e in emails]
    eligible["tags"] = pd.Series([draw(TAG_SETS) for _ in emails], dtype=object)
    # in a fresh world half the contacts are new to the provider and the ledger
    presence = [True, False] if draw(st.booleans()) else [True] * 7 + [False]
    members, rows = [], []
    for n, email in enumerate(emails, start=1):
        key = _mostly(draw, email.lower(), *KEYS)
        wanted = tuple(sorted({*eligible.at[n - 1, "tags"], *system}))
        # a member's ids are its own (None: not known)
        provider_id, stable_id = _mostly(draw, f"p{n}", None), _mostly(draw, f"s{n}", None)
        # an audience holds one member per address (Mailchimp's subscriber hash, Brevo's
        # unique email)
        if draw(st.sampled_from(presence)) and key not in {m[2] for m in members}:
            fields = eligible.loc[n - 1, ["salutation", "first_name", "last_name"]].tolist()
            fields[2] = _mostly(draw, fields[2], "Other")
            members.append(
                (
                    provider_id,
                    email if key == email.lower() else key,  # the key is the member's
                    key,
                    _mostly(draw, "subscribed", "pending", "unsubscribed", "archived"),
                    *fields,
                    _mostly(draw, wanted, ("VIP", *system), ("vip",)),
                    None,
                    stable_id,
                    None,
                )
            )
        if draw(st.sampled_from(presence)):
            rows.append(
                (
                    key,
                    _mostly(draw, email, key),
                    _mostly(draw, str(n), str(n + 1), None),
                    _mostly(draw, provider_id, "p1", None),
                    json.dumps(list(_mostly(draw, wanted, system)), ensure_ascii=False),
                    _mostly(draw, "subscribed", "opted_out", "gone", "resubscribed"),
                    _mostly(draw, None, "Member Exists"),
                    _mostly(draw, None, "k"),
                    _mostly(draw, None, "update", "create"),
                    _mostly(draw, None, *KEYS),
                    _mostly(draw, stable_id, "s1", None),
                    _mostly(draw, None, "2025-01-01T00:00:00+00:00"),
                    None,
                )
            )
    snapshot = pd.DataFrame(members, columns=list(SNAPSHOT_COLUMNS))
    unique_rows = sorted({row[0]: row for row in rows}.values())
    ledger = text_frame(text_rows(unique_rows, LEDGER_COLUMNS))
    return provider, eligible, snapshot, ledger


@settings(max_examples=400, deadline=None)
@given(worlds())
def test_the_bulk_pass_over_a_column_wise_ledger_decides_as_the_rules_alone(
    world: tuple[str, pd.DataFrame, pd.DataFrame, pd.DataFrame],
) -> None:
    provider, eligible, snapshot, ledger = world
    excluded = pd.DataFrame({c: pd.Series(dtype=object) for c in EXCLUDED_COLUMNS})
    system_tag = "CRM" if provider == "mailchimp" else None
    split = split_settled(eligible, snapshot, ledger, TAG_STYLES[provider], system_tag)
    event(f"{len(split.settled['action'])} settled in bulk")
    created = split_created(split.eligible, snapshot, ledger, TAG_STYLES[provider], system_tag)
    event(f"{len(created.rows['action'])} created in bulk")
    diff = build_diff(
        eligible, excluded, snapshot, ledger, provider=provider, system_tag=system_tag
    )
    alone = reconcile(
        desired_contacts(eligible),
        actual_members(snapshot),
        ledger_rows(ledger),
        crm_exclusions(excluded),
        Context(TAG_STYLES[provider], system_tag),
    )
    pd.testing.assert_frame_equal(by_key(diff), by_key(alone), check_dtype=False)
    # over the snapshot as its asset reads it (text columns Arrow-backed): the same diff in
    # every column, None where None (not NaN), and the same members for the rules
    stored = as_the_diff_reads_it(snapshot)
    assert any(stored.dtypes == TEXT) or snapshot.empty
    from_stored = build_diff(
        eligible, excluded, stored, ledger, provider=provider, system_tag=system_tag
    )
    ordered, expected = (d.sort_values("match_key", kind="stable") for d in (from_stored, diff))
    pd.testing.assert_frame_equal(ordered, expected, check_exact=True)
    for column in expected.columns:
        assert list(map(type, ordered[column])) == list(map(type, expected[column])), column
    assert list(actual_members(stored)) == list(actual_members(snapshot))


def test_a_deleted_member_without_a_stable_id_is_not_looked_up_by_one() -> None:
    """A missing value of a ledger frame is NaN: no member is looked up by the id "nan"."""
    rows = [
        (key, key, None, None, "[]", "subscribed", None, None, None, None, stable, None, None)
        for key, stable in (("a@b.de", None), ("c@d.de", "s2"))
    ]
    frame = text_frame(text_rows(rows, LEDGER_COLUMNS))
    scope = Scope(frozenset(), frozenset(), pd.DataFrame(), frame, snapshot_frame([]), True)
    looked_up: list[str] = []

    def members_by_id(ids: Sequence[str]) -> list[Member]:
        looked_up.extend(ids)
        return []

    assert confirmed_deletions(scope, frozenset({"a@b.de", "c@d.de"}), members_by_id) == {
        "a@b.de",
        "c@d.de",
    }
    assert looked_up == ["s2"]
