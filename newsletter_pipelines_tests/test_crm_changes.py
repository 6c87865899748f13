"""Change detection: the CRM queries by (`updated_at`, id), the watermark with its overlap
window (`sync.changes`), and reading the contacts at many addresses (SQLite and PostgreSQL)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import pytest
import sqlalchemy as sa
from hypothesis import example, given, settings
from hypothesis import strategies as st

from newsletter_pipelines.crm import changes
from newsletter_pipelines.crm.changes import changed_after, changed_between, latest_change
from newsletter_pipelines.crm.errors import CrmError
from newsletter_pipelines.crm.loader import load_demo
from newsletter_pipelines.crm.reader import read_contacts, read_contacts_at
from newsletter_pipelines.settings import CrmSchema
from newsletter_pipelines.sync.changes import Cursor, Mark, Span, digest, next_span
from newsletter_pipelines.sync.email_address import raw_match_key
from newsletter_pipelines_tests.conftest import DATA_DIR

T0 = datetime(2026, 12, 1, 9, 0, 0)
OVERLAP = timedelta(seconds=5)


@pytest.fixture
def crm(demo_crm_file: Path, tmp_path: Path) -> sa.Engine:
    path = tmp_path / "crm.sqlite3"
    shutil.copy(demo_crm_file, path)
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:  # four contacts changed at T0 and later, two at the same time
        for contact_id, seconds in ((7, 0), (3, 0), (11, 2), (5, 9)):
            conn.execute(
                sa.text("UPDATE contacts SET updated_at = :t WHERE id = :id"),
                {"t": T0 + timedelta(seconds=seconds), "id": contact_id},
            )
    return engine


def ids(marks: list[Mark]) -> list[str]:
    return [m.contact_id for m in marks]


def test_changes_come_oldest_first_ties_by_id_and_in_batches(crm: sa.Engine) -> None:
    schema = CrmSchema()
    start = Mark(T0, "")  # at or after T0
    assert ids(changed_after(crm, schema, start)) == ["3", "7", "11", "5"]
    first = changed_after(crm, schema, start, limit=1)
    assert ids(first) == ["3"]
    assert ids(changed_after(crm, schema, first[-1], limit=2)) == ["7", "11"]  # the tie
    assert ids(changed_between(crm, schema, first[-1], Mark(T0 + timedelta(seconds=2), "11")))
    assert latest_change(crm, schema) == Mark(T0 + timedelta(seconds=9), "5")
    everything = changed_after(crm, schema, None)
    assert len(everything) == 5000 - 25  # 25 demo contacts have no updated_at
    stamps = [m.updated_at for m in everything]
    assert stamps == sorted(stamps)


def test_a_failed_read_is_an_error_naming_the_table(crm: sa.Engine) -> None:
    with pytest.raises(CrmError, match="'kontakte'"):
        changed_after(crm, CrmSchema(contacts_table="kontakte"), None)


def test_a_tick_requests_what_changed_after_the_watermark() -> None:
    cursor = Cursor(Mark(T0, "7"), digest([Mark(T0, "3"), Mark(T0, "7")]))
    window = [Mark(T0, "3"), Mark(T0, "7")]
    assert next_span(cursor, [], window, OVERLAP) is None  # nothing new, nothing late
    fresh = [Mark(T0, "9"), Mark(T0 + timedelta(seconds=1), "2")]
    span = next_span(cursor, fresh, window, OVERLAP)
    assert span == Span(after=Mark(T0, "7"), upto=fresh[-1], late=False)
    assert span.run_key("brevo") == f"brevo:{fresh[-1].text()}"


def test_a_late_commit_in_the_window_takes_the_window_along() -> None:
    cursor = Cursor(Mark(T0, "7"), digest([Mark(T0, "7")]))
    late = [Mark(T0 - timedelta(seconds=2), "40"), Mark(T0, "7")]  # committed after the tick
    span = next_span(cursor, [], late, OVERLAP)
    assert span is not None and span.late
    assert span.after == Mark(T0 - OVERLAP, "") and span.upto == Mark(T0, "7")
    assert span.run_key("brevo") != Span(cursor.mark, Mark(T0, "7"), False).run_key("brevo")


def test_the_cursor_survives_its_text_form() -> None:
    cursor = Cursor(Mark(T0, "7"), "abc")
    assert Cursor.loads(cursor.dumps()) == cursor
    assert Cursor.loads("") == Cursor() and Cursor().dumps() == ""


def test_a_mark_with_microseconds_includes_its_own_contact(crm: sa.Engine) -> None:
    """SQLite compares times at milliseconds and rounds: .231690 must match its own mark (which
    holds the time as compared, .232)."""
    when = T0 + timedelta(seconds=20, microseconds=231_690)
    with crm.begin() as conn:
        conn.execute(sa.text("UPDATE contacts SET updated_at = :t WHERE id = 9"), {"t": when})
    (mark,) = changed_after(crm, CrmSchema(), Mark(T0 + timedelta(seconds=10), ""))
    assert mark.contact_id == "9" and abs(mark.updated_at - when) < timedelta(milliseconds=1)
    assert changed_between(crm, CrmSchema(), Mark(T0 + timedelta(seconds=10), ""), mark) == [mark]
    assert changed_after(crm, CrmSchema(), mark) == []


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def demo_crm(request: pytest.FixtureRequest, demo_crm_file: Path, tmp_path: Path) -> sa.Engine:
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        load_demo(url, DATA_DIR)
        return sa.create_engine(url)
    path = tmp_path / "crm.sqlite3"
    shutil.copy(demo_crm_file, path)
    return sa.create_engine(f"sqlite:///{path}")


def test_contacts_at_many_addresses_are_read_in_one_pass(demo_crm: sa.Engine) -> None:
    """Found by the webhook benchmark: 33,000 addresses and ids in one query passed
    PostgreSQL's 65,535 parameters. Past LOOKUP_MAX every contact is read and matched here,
    with the same result as the lookup in SQL."""
    schema = CrmSchema()
    everyone = read_contacts(demo_crm, schema)
    keys = sorted({k for k in map(raw_match_key, everyone["email"]) if k})
    few = read_contacts_at(demo_crm, schema, frozenset(keys[:50]), frozenset({"1", "2"}))
    assert set(few["contact_id"].astype(str)) >= {"1", "2"}
    many_keys = frozenset(keys) | {f"nobody{i}@example.org" for i in range(40_000)}
    many_ids = frozenset(map(str, range(1, 40_000)))
    many = read_contacts_at(demo_crm, schema, many_keys, many_ids)
    assert len(many) == len(everyone)
    expected = everyone[everyone["email"].map(raw_match_key).isin(keys[:50])]
    assert set(expected["contact_id"]) <= set(few["contact_id"])
    assert few.set_index("contact_id")["tags"].to_dict() == (
        everyone.set_index("contact_id").loc[few["contact_id"], "tags"].to_dict()
    )


def test_a_tag_table_with_times_makes_a_tag_change_a_contact_change(demo_crm: sa.Engine) -> None:
    """NEWSLETTER_CRM_SCHEMA__TAG_UPDATED_AT: a tag row's time counts as its contact's change;
    a contact whose contact row and tag row both changed has the later time."""
    with demo_crm.begin() as conn:
        conn.execute(sa.text("ALTER TABLE contact_tags ADD COLUMN changed_at TIMESTAMP"))
        conn.execute(sa.text("UPDATE contacts SET updated_at = :t"), {"t": T0})
        conn.execute(
            sa.text(
                "INSERT INTO contact_tags (contact_id, tag, changed_at) VALUES (:id, :tag, :t)"
            ),
            [
                {"id": 12, "tag": "Neu", "t": T0 + timedelta(seconds=30)},
                {"id": 4, "tag": "Neu", "t": T0 + timedelta(seconds=20)},
                {"id": 4, "tag": "Neuer", "t": T0 + timedelta(seconds=40)},  # the later counts
            ],
        )
        conn.execute(
            sa.text("UPDATE contacts SET updated_at = :t WHERE id = 12"),
            {"t": T0 + timedelta(seconds=10)},
        )
    timed = CrmSchema(tag_updated_at="changed_at")
    since = Mark(T0 + timedelta(seconds=5), "")
    assert changed_after(demo_crm, CrmSchema(), since) == [Mark(T0 + timedelta(seconds=10), "12")]
    assert changed_after(demo_crm, timed, since) == [
        Mark(T0 + timedelta(seconds=30), "12"),
        Mark(T0 + timedelta(seconds=40), "4"),
    ]
    assert latest_change(demo_crm, timed) == Mark(T0 + timedelta(seconds=40), "4")
    upto = Mark(T0 + timedelta(seconds=30), "12")
    assert changed_between(demo_crm, timed, since, upto) == [upto]


def _texts_of(moment: datetime) -> st.SearchStrategy[object]:
    """`moment` as the many things a SQLite CRM may hold for it: text in SQLite's time formats
    (separator, fraction, zone, date only, spaces), a Julian day number as real or text (with
    a space or a sign before it), seconds since 1970 (which SQLite does not read as such)."""
    zone = st.sampled_from(["", "Z", "+00:00", "+02:00", "-05:30", "+14:59", "-14:59", "+15:00"])
    form = st.sampled_from(
        ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%d %H:%M", "%Y-%m-%d"]
    )
    text = st.builds(
        lambda f, z, pad: pad[0] + moment.strftime(f) + z + pad[1],
        form,
        zone,
        st.sampled_from([("", ""), ("", " "), (" ", "")]),
    )
    julian = moment.replace(tzinfo=UTC).timestamp() / 86400 + 2440587.5
    days = st.sampled_from([julian, str(julian), f" {julian}", f"+{julian}"])
    return text | days | st.just(int(moment.timestamp()))


SHIFTS = st.builds(  # hours, where a day and a zone's offset meet; a minute or a second off
    lambda hours, rest: timedelta(hours=hours, seconds=rest),
    st.integers(-96, 96),
    st.sampled_from([0, 1, 59, 1800, 3599]),
)
AROUND = datetime(2026, 12, 3, 9, 30)
STORED = (
    st.none()
    | st.sampled_from(["12:30", "soon", "", "2026-13-45"])
    | SHIFTS.flatmap(lambda shift: _texts_of(AROUND + shift))
)


@settings(max_examples=300, deadline=None)
@example(  # the day before the mark's in its text, after the mark in UTC
    affinity="DATETIME",
    stored=["2026-12-02 22:00:00-05:00"],
    after=datetime(2026, 12, 3, 1) - AROUND,
    upto=None,
    contact="",
)
@given(
    affinity=st.sampled_from(["DATETIME", "TEXT", ""]),
    stored=st.lists(STORED, min_size=1, max_size=8),
    after=SHIFTS,
    upto=st.none() | SHIFTS,
    contact=st.sampled_from(["", "3"]),
)
def test_sqlite_changes_read_past_the_date_prefilter_are_the_changes_read_without_it(
    affinity: str, stored: list[object], after: timedelta, upto: timedelta | None, contact: str
) -> None:
    """On SQLite, rows whose text dates two days before the mark's date or earlier are left
    out before their times are normalised (`changes._plausibly_after`): whatever the stored
    values (zones up to 14:59 from UTC, Julian days, text SQLite cannot read), the changes
    are those read without that shortcut."""
    engine = sa.create_engine("sqlite://", poolclass=sa.pool.StaticPool)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE contacts (id INTEGER PRIMARY KEY, updated_at {affinity})"
        )
        conn.exec_driver_sql("INSERT INTO contacts VALUES (?, ?)", list(enumerate(stored, start=1)))
    schema = CrmSchema()
    mark = Mark(AROUND + after, contact)

    def read() -> list[Mark]:
        if upto is None:
            return changed_after(engine, schema, mark)
        return changed_between(engine, schema, mark, Mark(AROUND + upto, "5"))

    found = read()
    with mock.patch.object(changes, "_plausibly_after", return_value=None):
        assert found == read()
    engine.dispose()
