"""The column-wise paths of the CRM read, the address check and the snapshot frame agree with
the row-wise ones."""

from __future__ import annotations

import io
import sqlite3
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter_pipelines.crm import reader
from newsletter_pipelines.crm.reader import CONTACT_COLUMNS, read_contacts
from newsletter_pipelines.providers.base import MemberStatus, rows_of_pages
from newsletter_pipelines.providers.trusted import moment
from newsletter_pipelines.settings import CrmSchema
from newsletter_pipelines.storage.frames import read_frame, write_frame
from newsletter_pipelines.sync import email_address
from newsletter_pipelines.sync.eligibility import classify
from newsletter_pipelines.sync.email_address import (
    check_email,
    check_emails,
    clean_raw_email,
    clean_raw_emails,
)
from newsletter_pipelines.sync.inputs import (
    SNAPSHOT_COLUMNS,
    snapshot_frame_of_columns,
    snapshot_frame_of_rows,
)
from newsletter_pipelines.sync.snapshot_columns import merged, page_columns, status_counts
from newsletter_pipelines_tests.test_eligibility import contact, frame

RAW_VALUES = st.one_of(
    st.none(),
    st.just(float("nan")),
    st.integers(-5, 5),  # one kind of number: 1, 1.0 and True are one value (pandas' factorize)
    st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
    st.sampled_from(["a@b.de", " a@b.de", "a@b.de\x1c", "\x1fa@b.de", "a@b.de\x00", "ä@b.de"]),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(RAW_VALUES, max_size=30))
def test_clean_raw_emails_answers_what_clean_raw_email_answers(values: list[object]) -> None:
    column = np.empty(len(values), dtype=object)
    column[:] = values
    cleaned = clean_raw_emails(column)
    expected = [clean_raw_email(v) for v in values]
    assert cleaned.tolist() == expected
    assert [type(c) for c in cleaned] == [type(e) for e in expected]


def test_addresses_checked_in_several_batches_answer_what_the_library_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(email_address, "_BATCH", 3)
    batch = ["a@b.de", "Info@X.DE", "x@bücher.de", "B@C.DE", "n/a", "a@x.test", "ANNA@EXAMPLE.COM"]
    assert check_emails(batch) == [check_email(a) for a in batch]


def test_a_repeated_address_off_the_fast_path_is_checked_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked: list[str] = []

    def counted(address: str) -> email_address.CheckResult:
        checked.append(address)
        return check_email(address)

    monkeypatch.setattr(email_address, "check_email", counted)
    batch = ["x@bücher.de", "n/a", "x@bücher.de", "a@b.de", "n/a", "a@b.de"]
    assert check_emails(batch) == [check_email(a) for a in batch]
    assert sorted(checked) == ["n/a", "x@bücher.de"]


@pytest.mark.parametrize("first", ["a@b.de", "a@b.de\x00"])
def test_an_address_with_a_nul_character_is_not_taken_for_its_prefix(first: str) -> None:
    """pandas' factorize compares text up to a NUL: each address keeps its own verdict."""
    other = "a@b.de\x00" if first == "a@b.de" else "a@b.de"
    result = classify(frame(contact(1, email=first), contact(2, email=other)))
    valid_id = 1 if first == "a@b.de" else 2
    assert list(result.eligible["contact_id"]) == [valid_id]
    assert list(result.excluded["reason"]) == ["invalid_email"]


def _loose_crm(path: Path, rows: int) -> None:
    """A CRM with untyped SQLite columns: text, numbers, blobs and NULL mixed in one column."""
    kinds = [None, "Anna", "Anna", 7, 7.5, 0, 1, b"\x00\xff", "2025-01-01 10:00:00", ""]
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE contacts ({', '.join(['id', *CONTACT_COLUMNS[1:]])})")
        conn.execute("CREATE TABLE contact_tags (contact_id, tag)")
        conn.executemany(
            f"INSERT INTO contacts VALUES ({', '.join('?' * len(CONTACT_COLUMNS))})",
            [
                (i, *(kinds[(i * (c + 3)) % len(kinds)] for c in range(len(CONTACT_COLUMNS) - 1)))
                for i in range(rows)
            ],
        )
        conn.executemany(
            "INSERT INTO contact_tags VALUES (?, ?)",
            [(i % (rows + 5), kinds[i % len(kinds)]) for i in range(rows * 2)],
        )


def _row_wise(path: Path) -> pd.DataFrame:
    """The contacts frame built row by row: `from_records`, then a dict of tag lists."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            f"SELECT {', '.join(['id', *CONTACT_COLUMNS[1:]])} FROM contacts ORDER BY id"
        ).fetchall()
        tag_rows = conn.execute(
            "SELECT contact_id, tag FROM contact_tags WHERE tag IS NOT NULL"
            " ORDER BY contact_id, tag"
        ).fetchall()
    expected = pd.DataFrame.from_records(rows, columns=list(CONTACT_COLUMNS))
    tags: dict[object, list[str]] = {}
    for cid, tag in tag_rows:
        tags.setdefault(cid, []).append(str(tag))
    expected["tags"] = [tuple(tags.get(cid, ())) for cid in expected["contact_id"]]
    return expected


@pytest.mark.parametrize("rows", [0, 1, 57])
def test_the_column_wise_read_builds_the_row_wise_frame(
    rows: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader, "_BATCH_ROWS", 10)  # several batches, text shared across them
    path = tmp_path / "loose.sqlite3"
    _loose_crm(path, rows)
    engine = sa.create_engine(f"sqlite:///{path}")
    contacts = read_contacts(engine, CrmSchema())
    engine.dispose()
    expected = _row_wise(path)
    pd.testing.assert_frame_equal(contacts, expected, check_exact=True)
    for name in expected.columns:
        got, want = contacts[name].tolist(), expected[name].tolist()
        assert [type(v) for v in got] == [type(v) for v in want], name


START = datetime(2026, 3, 1, 10, tzinfo=UTC)
CHANGED = st.one_of(
    st.none(),
    st.integers(0, 5).map(lambda s: START + timedelta(seconds=s)),
    st.integers(0, 5).map(lambda s: moment(f"2026-03-01T10:00:0{s}+00:00")),  # pydantic's zone
    st.just(datetime(2026, 3, 1, 12, tzinfo=timezone(timedelta(hours=2)))),
)
TEXT = st.text(max_size=6)
MEMBER_ROWS = st.tuples(
    st.text(alphabet="0123456789abcdef", min_size=1, max_size=4),
    st.sampled_from(["a@b.de", " A@B.de", "x@bücher.de", "ä@b.de", "p@example.com"]),
    st.sampled_from([s.value for s in MemberStatus]),
    TEXT,
    TEXT,
    TEXT,
    st.lists(st.sampled_from(["VIP", "crm", "a"]), unique=True).map(lambda t: tuple(sorted(t))),
    CHANGED,
    st.none() | TEXT,
    st.sampled_from([None, "person", "admin"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(MEMBER_ROWS, max_size=12))
def test_the_snapshot_frame_built_by_columns_is_the_frame_of_its_rows(rows: list[tuple]) -> None:
    """Whatever mix of change times (none, UTC, pydantic's zone, another offset)."""
    expected = pd.DataFrame(
        [(*r[:2], email_address.match_key(r[1]), *r[2:]) for r in rows],
        columns=list(SNAPSHOT_COLUMNS),
    )
    pd.testing.assert_frame_equal(snapshot_frame_of_rows(rows), expected)


def _stored(frame: pd.DataFrame, *, arrow_text: bool) -> pd.DataFrame:
    file = io.BytesIO()
    write_frame(frame, file)
    file.seek(0)
    return read_frame(file, arrow_text=arrow_text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(MEMBER_ROWS, max_size=5), max_size=4))
def test_the_snapshot_built_page_by_page_is_stored_as_the_frame_of_its_rows(
    pages: list[list[tuple]],
) -> None:
    """Pages made columns as they come, then merged (a member on two pages once, at its first
    place as the later page holds it; the ids repeat here), store what the frame of the pages'
    rows stores: read back whole, and with Arrow text."""
    rows = rows_of_pages(pages)
    members = merged([page_columns(page) for page in pages])
    assert len(members) == len(rows)
    assert status_counts(members) == dict(Counter(row[2] for row in rows))
    built = snapshot_frame_of_columns(members)
    expected = snapshot_frame_of_rows(rows)
    assert list(built.columns) == list(expected.columns)
    for arrow_text in (False, True):
        stored, wanted = (
            _stored(built, arrow_text=arrow_text),
            _stored(expected, arrow_text=arrow_text),
        )
        pd.testing.assert_frame_equal(stored, wanted, check_exact=True)
        for name in wanted.columns:
            got, want = stored[name].tolist(), wanted[name].tolist()
            assert [type(v) for v in got] == [type(v) for v in want], name
