"""The CRM writer of the import-back (SQLite and PostgreSQL) and its settings."""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from newsletter_pipelines.crm.errors import CrmError
from newsletter_pipelines.crm.loader import insert_rows
from newsletter_pipelines.crm.reader import read_contacts
from newsletter_pipelines.crm.schema import CONTACT_FIELDS, create_schema, crm_tables
from newsletter_pipelines.crm.writer import (
    Activity,
    ContactChange,
    CrmWriter,
    ItemOutcome,
    ItemResult,
    NewContact,
    WriteSummary,
)
from newsletter_pipelines.settings import CrmSchema, CrmValues, Settings

APPLIED, ALREADY_APPLIED = ItemOutcome.APPLIED, ItemOutcome.ALREADY_APPLIED
MISSING_CONTACT, EXISTING_ADDRESS = ItemOutcome.MISSING_CONTACT, ItemOutcome.EXISTING_ADDRESS
T0 = datetime(2025, 1, 1, 12, 0)
NOW = datetime(2025, 6, 1, 8, 30)
MAPPED = CrmSchema(
    contacts_table="kontakte",
    id="kid",
    email="mail",
    newsletter="nl_flag",
    updated_at="geaendert",
    created_at="angelegt",
    tags_table="kontakt_tags",
    tag_contact_id="kontakt",
    tag="schlagwort",
    activities_table="aktivitaeten",
    activities_id="aid",
    activities_contact_id="kontakt",
    activities_kind="art",
    activities_details="daten",
    activities_source_key="quelle",
)


def activity(key: str, kind: str = "unsubscribed", **details: Any) -> Activity:
    return Activity(
        kind=kind,
        provider="mailchimp",
        audience="mailchimp",
        occurred_at=datetime(2025, 5, 31, 22, 0, tzinfo=UTC),
        details=details,
        source_key=key,
    )


def signup(email: str, key: str) -> NewContact:
    return NewContact(email, "", "X", "Y", frozenset(), activity(key, kind="signed_up"))


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def contact(cid: int, email: str | None, newsletter: str = "yes") -> dict[str, Any]:
    return {
        "id": cid,
        "first_name": f"F{cid}",
        "last_name": f"L{cid}",
        "email": email,
        "newsletter": newsletter,
        "is_private": False,
        "updated_at": T0,
        "created_at": T0,
    }


@dataclass
class Crm:
    """A small CRM under test: its engine, mapping and newsletter values."""

    engine: sa.Engine
    schema: CrmSchema
    values: CrmValues

    def writer(self, chunk_size: int = 1000, **kwargs: Any) -> CrmWriter:
        return CrmWriter(self.engine, self.schema, self.values, chunk_size, **kwargs)

    def fill(self, contacts: list[dict[str, Any]], tags: dict[int, list[str]]) -> None:
        rows = [{"contact_id": cid, "tag": tag} for cid, ts in tags.items() for tag in ts]
        insert_rows(self.engine, self.schema, contacts, rows)

    def contact(self, cid: int) -> dict[str, Any]:
        table = crm_tables(self.schema).contacts
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(table).where(table.c[self.schema.id] == cid)).one()
        return dict(zip(("id", *_FIELDS), row, strict=True))

    def tags(self, cid: int) -> set[str]:
        table, s = crm_tables(self.schema).tags, self.schema
        with self.engine.connect() as conn:
            query = sa.select(table.c[s.tag]).where(table.c[s.tag_contact_id] == cid)
            return set(conn.execute(query).scalars())

    def activities(self) -> list[dict[str, Any]]:
        table = crm_tables(self.schema).activities
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(table).order_by(table.c[self.schema.activities_id]))
            return [dict(zip(_ACTIVITY_FIELDS, row, strict=True)) for row in rows]

    def count(self) -> int:
        table = crm_tables(self.schema).contacts
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


_FIELDS = CONTACT_FIELDS[1:]  # every contact field but the id
_ACTIVITY_FIELDS = (
    "id",
    "contact_id",
    "kind",
    "provider",
    "audience",
    "occurred_at",
    "details",
    "source_key",
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'crm.sqlite3'}"


def three_contacts(url: str) -> Crm:
    """The default schema with three contacts: 1 and 2 say yes, 3 says no."""
    engine = sa.create_engine(url)
    create_schema(engine, CrmSchema())
    result = Crm(engine, CrmSchema(), CrmValues())
    result.fill(
        [contact(1, "a@example.de"), contact(2, "b@example.de"), contact(3, "c@example.de", "no")],
        {1: ["A", "B"], 2: ["VIP"]},
    )
    return result


@pytest.fixture
def crm(database_url: str) -> Iterator[Crm]:
    """`three_contacts` on each database."""
    result = three_contacts(database_url)
    yield result
    result.engine.dispose()


def counters(summary: WriteSummary) -> Counter[str]:
    """The summary's counters by item result (a created contact is an applied item)."""
    return Counter(
        {
            APPLIED: summary.applied + summary.contacts_created,
            ALREADY_APPLIED: summary.skipped_already_applied,
            MISSING_CONTACT: summary.skipped_missing_contact,
            EXISTING_ADDRESS: summary.skipped_existing_address,
        }
    )


def test_newsletter_set_with_mapped_names_and_values(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_CRM_VALUES__YES", "Ja")
    monkeypatch.setenv("NEWSLETTER_CRM_VALUES__NO", "Nein")
    monkeypatch.setenv("NEWSLETTER_CRM_VALUES__UNSPECIFIED", "k. A.")
    engine = sa.create_engine(database_url)
    create_schema(engine, MAPPED)
    crm = Crm(engine, MAPPED, Settings().crm_values)
    crm.fill(
        [
            contact(1, "a@example.de", "Ja"),
            contact(2, "b@example.de", "Nein"),
            contact(3, "c@x.de"),
        ],
        {},
    )
    summary = crm.writer().apply(
        [
            ContactChange(1, activity("k1"), newsletter="no"),
            ContactChange(2, activity("k2"), newsletter="no"),  # already Nein
            ContactChange(3, activity("k3"), newsletter="unspecified"),
        ],
        [],
        now=NOW,
    )
    assert [crm.contact(i)["newsletter"] for i in (1, 2, 3)] == ["Nein", "Nein", "k. A."]
    assert [crm.contact(i)["updated_at"] for i in (1, 2, 3)] == [NOW, T0, NOW]
    assert summary.newsletter_set == Counter(no=1, unspecified=1)
    assert (summary.applied, summary.activities, summary.chunks) == (3, 3, 1)
    assert [a["source_key"] for a in crm.activities()] == ["k1", "k2", "k3"]
    assert set(sa.inspect(engine).get_table_names()) == {"kontakte", "kontakt_tags", "aktivitaeten"}
    engine.dispose()


def test_tags_added_and_removed_and_updated_at_only_on_real_changes(crm: Crm) -> None:
    summary = crm.writer().apply(
        [
            ContactChange(
                1, activity("k1"), add_tags=frozenset({"B", "C"}), remove_tags={"A", "Z"}
            ),
            ContactChange(2, activity("k2"), add_tags=frozenset({"VIP"}), remove_tags={"none"}),
            ContactChange(3, activity("k3"), newsletter="no"),  # already no
        ],
        [],
        now=NOW,
    )
    assert crm.tags(1) == {"B", "C"} and crm.tags(2) == {"VIP"}
    assert (summary.tags_added, summary.tags_removed) == (1, 1)
    assert [crm.contact(i)["updated_at"] for i in (1, 2, 3)] == [NOW, T0, T0]
    assert summary.newsletter_set == Counter()
    assert summary.activities == 3 and len(crm.activities()) == 3


def test_changes_to_one_contact_in_one_chunk_apply_in_order(crm: Crm) -> None:
    summary = crm.writer().apply(
        [
            ContactChange(1, activity("k1"), newsletter="no", remove_tags={"A"}),
            ContactChange(1, activity("k2"), newsletter="yes", add_tags={"A"}),  # back as stored
        ],
        [],
        now=NOW,
    )
    assert crm.contact(1)["newsletter"] == "yes" and crm.tags(1) == {"A", "B"}
    assert crm.contact(1)["updated_at"] == T0
    assert (summary.applied, summary.activities, summary.tags_added) == (2, 2, 0)


def test_activity_row_content(crm: Crm) -> None:
    occurred = datetime(2025, 5, 31, 23, 15, tzinfo=timezone(timedelta(hours=2)))
    item = Activity(
        kind="unsubscribed",
        provider="brevo",
        audience="brevo-main",
        occurred_at=occurred,
        details={"reason": "Abmeldung über Link", "campaign": 17},
        source_key="brevo:brevo-main:b@example.de:unsubscribed:2025-05-31T21:15:00Z",
    )
    crm.writer().apply([ContactChange(2, item, newsletter="no")], [], now=NOW)
    [row] = crm.activities()
    assert row["contact_id"] == 2 and row["kind"] == "unsubscribed"
    assert (row["provider"], row["audience"]) == ("brevo", "brevo-main")
    assert row["occurred_at"] == datetime(2025, 5, 31, 21, 15)  # UTC, naive
    assert json.loads(row["details"]) == {"reason": "Abmeldung über Link", "campaign": 17}
    assert "über" in row["details"]
    assert row["source_key"] == item.source_key


def test_applying_twice_writes_once(crm: Crm) -> None:
    changes = [
        ContactChange(1, activity("k1"), newsletter="no", add_tags={"X"}),
        ContactChange(1, activity("k1"), newsletter="no", add_tags={"X"}),  # same key, same list
    ]
    first = crm.writer().apply(changes, [], now=NOW)
    second = crm.writer().apply(changes, [], now=NOW + timedelta(days=1))
    assert (first.applied, first.skipped_already_applied) == (1, 1)
    assert (second.applied, second.skipped_already_applied, second.activities) == (0, 2, 0)
    assert crm.contact(1)["updated_at"] == NOW and crm.tags(1) == {"A", "B", "X"}
    assert len(crm.activities()) == 1


def test_new_contact_created_once(crm: Crm) -> None:
    new = NewContact(
        email="neu@example.de",
        salutation="Frau",
        first_name="Nora",
        last_name="Neu",
        tags=frozenset({"Newsletter", "Event"}),
        activity=activity("signup:neu", kind="signed_up"),
    )
    first = crm.writer().apply([], [new], now=NOW)
    second = crm.writer().apply([], [new], now=NOW)
    assert (first.contacts_created, first.activities) == (1, 1)
    assert (second.contacts_created, second.skipped_already_applied) == (0, 1)
    assert crm.count() == 4
    created = crm.contact(4)
    assert created["email"] == "neu@example.de" and created["newsletter"] == "yes"
    assert (created["salutation"], created["first_name"], created["last_name"]) == (
        "Frau",
        "Nora",
        "Neu",
    )
    assert created["is_private"] is False
    assert created["created_at"] == created["updated_at"] == NOW
    assert crm.tags(4) == {"Newsletter", "Event"}
    [row] = crm.activities()
    assert (row["contact_id"], row["kind"]) == (4, "signed_up")
    assert len(read_contacts(crm.engine, crm.schema)) == 4


def test_new_contact_with_a_known_address_is_skipped(crm: Crm) -> None:
    def new(email: str, key: str) -> NewContact:
        return NewContact(email, "", "X", "Y", frozenset(), activity(key, kind="signed_up"))

    summary = crm.writer().apply(
        [],
        [new(" B@Example.DE ", "s1"), new("d@example.de", "s2"), new("D@example.de", "s3")],
        now=NOW,
    )
    assert (summary.contacts_created, summary.skipped_existing_address) == (1, 2)
    assert crm.count() == 4 and len(crm.activities()) == 1


def test_chunks_are_transactions(crm: Crm) -> None:
    lines: list[str] = []
    extra = [contact(i, f"x{i}@example.de") for i in range(4, 7)]
    crm.fill(extra, {})
    changes = [ContactChange(i, activity(f"k{i}"), newsletter="no") for i in (1, 2, 4, 5, 6)]
    summary = crm.writer(chunk_size=2, log=lines.append).apply(changes, [], now=NOW)
    assert (summary.chunks, summary.applied, summary.activities) == (3, 5, 5)
    assert len(lines) == 3
    assert all(crm.contact(i)["newsletter"] == "no" for i in (1, 2, 4, 5, 6))


def test_a_failing_chunk_rolls_back_alone(crm: Crm) -> None:
    broken = Activity(None, "mailchimp", "m", None, {}, "k3")  # type: ignore[arg-type]
    changes = [
        ContactChange(1, activity("k1"), newsletter="no"),
        ContactChange(2, activity("k2"), newsletter="no"),
        ContactChange(3, broken, newsletter="yes"),  # kind is NOT NULL
    ]
    with pytest.raises(CrmError) as error:
        crm.writer(chunk_size=2).apply(changes, [], now=NOW)
    message = str(error.value)
    assert "cannot write the CRM table 'activities'" in message
    assert "1 earlier chunks are committed" in message
    assert crm.contact(1)["newsletter"] == "no" and crm.contact(3)["newsletter"] == "no"
    assert len(crm.activities()) == 2


def test_change_to_an_unknown_contact_is_skipped(crm: Crm) -> None:
    frame = read_contacts(crm.engine, crm.schema)
    cid = frame["contact_id"].iloc[0]  # a numpy integer, as the reader's frame holds it
    summary = crm.writer().apply(
        [ContactChange(cid, activity("k1"), newsletter="no"), ContactChange(99, activity("k9"))],
        [],
        now=NOW,
    )
    assert (summary.applied, summary.skipped_missing_contact) == (1, 1)
    assert crm.contact(1)["newsletter"] == "no"


def test_crm_without_activities_table_reads_but_cannot_be_written(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    tables = crm_tables(CrmSchema())
    tables.metadata.create_all(engine, tables=[tables.contacts, tables.tags])
    crm = Crm(engine, CrmSchema(), CrmValues())
    crm.fill([contact(1, "a@example.de")], {})
    assert len(read_contacts(engine, crm.schema)) == 1
    with pytest.raises(CrmError, match="cannot read the CRM table 'activities' at ") as error:
        crm.writer().apply([ContactChange(1, activity("k1"), newsletter="no")], [])
    assert "Traceback" not in str(error.value)
    assert crm.contact(1)["newsletter"] == "yes"
    engine.dispose()


def test_error_message_hides_the_password() -> None:
    engine = sa.create_engine("postgresql://crm:s3cret@127.0.0.1:1/crm")
    writer = CrmWriter(engine, CrmSchema(), CrmValues())
    new = NewContact("n@example.de", "", "", "", frozenset(), activity("s1"))
    for changes, news in (([ContactChange(1, activity("k1"))], []), ([], [new])):
        with pytest.raises(CrmError, match=r"'contacts' at postgresql://crm:\*\*\*@") as error:
            writer.apply(changes, news)
        assert "s3cret" not in str(error.value)


def test_contact_change_validation() -> None:
    with pytest.raises(ValueError, match="newsletter must be one of"):
        ContactChange(1, activity("k"), newsletter="Ja")
    with pytest.raises(ValueError, match="both added and removed"):
        ContactChange(1, activity("k"), add_tags={"A"}, remove_tags={"A"})
    with pytest.raises(ValueError, match="source_key"):
        activity("")


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_CRM_VALUES__YES", "J")
    monkeypatch.setenv("NEWSLETTER_CRM_VALUES__NO", "N")
    monkeypatch.setenv("NEWSLETTER_CRM_WRITE_BACK", "false")
    monkeypatch.setenv("NEWSLETTER_IMPORT_BACK_CRON", "30 3 * * 1-5")
    monkeypatch.setenv("NEWSLETTER_TIMEZONE", "America/New_York")
    monkeypatch.setenv("NEWSLETTER_CRM_SCHEMA__ACTIVITIES_TABLE", "crm_activities")
    monkeypatch.setenv("NEWSLETTER_CRM_SCHEMA__ACTIVITIES_SOURCE_KEY", "dedupe_key")
    settings = Settings()
    assert settings.crm_values == CrmValues(yes="J", no="N", unspecified="unspecified")
    assert settings.crm_write_back is False
    assert settings.import_back_cron == "30 3 * * 1-5"
    assert settings.timezone == "America/New_York"
    assert settings.crm_schema.activities_table == "crm_activities"
    assert settings.crm_schema.activities_source_key == "dedupe_key"


def test_settings_defaults() -> None:
    settings = Settings()
    assert settings.crm_values == CrmValues(yes="yes", no="no", unspecified="unspecified")
    assert settings.crm_write_back is True
    assert (settings.import_back_cron, settings.timezone) == ("0 2 * * *", "Europe/Berlin")


@pytest.mark.parametrize(
    "zone", ["Mars/Olympus_Mons", "", "../etc/passwd", "europe/berlin", "Europe"]
)
def test_unknown_timezone_names_the_variable(monkeypatch: pytest.MonkeyPatch, zone: str) -> None:
    monkeypatch.setenv("NEWSLETTER_TIMEZONE", zone)
    with pytest.raises(ValidationError, match="NEWSLETTER_TIMEZONE: unknown time zone"):
        Settings()


def test_crm_values_must_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_CRM_VALUES__NO", "yes")
    with pytest.raises(ValidationError, match="must differ"):
        Settings()


def test_contact_ids_given_as_text(crm: Crm) -> None:
    """A plan may carry the ids as text; the CRM's integer ids still match."""
    summary = crm.writer().apply(
        [ContactChange("2", activity("k2"), newsletter="no", add_tags=frozenset({"T"}))],
        [],
        now=NOW,
    )
    assert (summary.applied, summary.skipped_missing_contact) == (1, 0)
    assert crm.contact(2)["newsletter"] == "no" and crm.tags(2) == {"VIP", "T"}
    assert crm.activities()[0]["contact_id"] == 2


def test_text_ids_of_a_mapped_crm(database_url: str) -> None:
    """A CRM whose ids are text gets them as text, even when a plan carries integers."""
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE people (pid TEXT PRIMARY KEY, salutation TEXT, first_name TEXT,"
                " last_name TEXT, email TEXT, newsletter TEXT, is_private BOOLEAN,"
                " updated_at TIMESTAMP, created_at TIMESTAMP)"
            )
        )
        conn.execute(sa.text("CREATE TABLE people_tags (pid TEXT, tag TEXT)"))
        conn.execute(
            sa.text("INSERT INTO people (pid, email, newsletter) VALUES ('7', 'a@x.de', 'yes')")
        )
    schema = CrmSchema(
        contacts_table="people", id="pid", tags_table="people_tags", tag_contact_id="pid"
    )
    create_schema(engine, schema)  # adds the activities table only
    summary = CrmWriter(engine, schema, CrmValues()).apply(
        [ContactChange(7, activity("k7"), newsletter="no", add_tags=frozenset({"T"}))], [], now=NOW
    )
    assert summary.applied == 1
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT newsletter FROM people")).scalar_one() == "no"
        assert conn.execute(sa.text("SELECT pid, tag FROM people_tags")).one() == ("7", "T")
    engine.dispose()


def test_item_outcome_values() -> None:
    assert [str(outcome) for outcome in ItemOutcome] == [
        "applied",
        "already_applied",
        "missing_contact",
        "existing_address",
    ]


def test_items_say_what_happened_to_each_item_in_input_order(crm: Crm) -> None:
    crm.writer().apply([ContactChange(3, activity("k0"), newsletter="yes")], [], now=NOW)
    summary = crm.writer(chunk_size=3).apply(
        [
            ContactChange("2", activity("k1"), newsletter="no"),
            ContactChange(99, activity("k2"), newsletter="no"),
            ContactChange(3, activity("k0"), newsletter="no"),  # applied before
            ContactChange(1, activity("k1"), newsletter="no"),  # the key of the first one
        ],
        [
            signup("neu@example.de", "s1"),
            signup(" B@Example.DE ", "s2"),
            signup("NEU@example.de", "s3"),  # the address the first one created
        ],
        now=NOW,
    )
    assert summary.items == [
        ItemResult("k1", "2", APPLIED),
        ItemResult("k2", "99", MISSING_CONTACT),
        ItemResult("k0", "3", ALREADY_APPLIED),
        ItemResult("k1", "1", ALREADY_APPLIED),
        ItemResult("s1", "4", APPLIED),
        ItemResult("s2", None, EXISTING_ADDRESS),
        ItemResult("s3", None, EXISTING_ADDRESS),
    ]
    assert Counter(item.result for item in summary.items) == counters(summary)
    assert crm.contact(4)["email"] == "neu@example.de"


def test_applying_a_list_twice_reports_every_item_already_applied(crm: Crm) -> None:
    changes = [
        ContactChange(1, activity("k1"), newsletter="no"),
        ContactChange("2", activity("k2"), add_tags=frozenset({"X"})),
    ]
    new_contacts = [signup("neu@example.de", "s1"), signup("zwei@example.de", "s2")]
    first = crm.writer(chunk_size=3).apply(changes, new_contacts, now=NOW)
    second = crm.writer(chunk_size=3).apply(changes, new_contacts, now=NOW)
    assert first.items == [
        ItemResult("k1", "1", APPLIED),
        ItemResult("k2", "2", APPLIED),
        ItemResult("s1", "4", APPLIED),
        ItemResult("s2", "5", APPLIED),
    ]
    assert second.items == [
        ItemResult("k1", "1", ALREADY_APPLIED),
        ItemResult("k2", "2", ALREADY_APPLIED),
        ItemResult("s1", None, ALREADY_APPLIED),
        ItemResult("s2", None, ALREADY_APPLIED),
    ]
    assert Counter(item.result for item in second.items) == counters(second)


_EMAILS = (
    "a@example.de",
    " A@EXAMPLE.DE",
    "neu@example.de",
    "NEU@example.de ",
    "ärger@example.de",
    nfd("ÄRGER@example.de"),
    "",
)


@settings(max_examples=60, deadline=None)
@given(
    changes=st.lists(
        st.tuples(
            st.sampled_from([1, 2, 3, "2", 99]),
            st.sampled_from("abcde"),
            st.sampled_from([None, "yes", "no"]),
        ),
        max_size=8,
    ),
    signups=st.lists(st.tuples(st.sampled_from(_EMAILS), st.sampled_from("cdefg")), max_size=8),
    chunk_size=st.integers(1, 5),
)
def test_items_agree_with_the_counters(
    changes: list[tuple[int | str, str, str | None]],
    signups: list[tuple[str, str]],
    chunk_size: int,
) -> None:
    """Any list (keys shared between items, ids missing, addresses repeated), applied twice:
    one item per input item in order, counted as the counters say; the second time every
    item applied before is already applied and every skipped one is skipped the same way."""
    crm = three_contacts("sqlite://")
    items_in = [
        *(ContactChange(cid, activity(key), newsletter=value) for cid, key, value in changes),
        *(signup(email, key) for email, key in signups),
    ]
    n_changes = len(changes)
    first, second = (
        crm.writer(chunk_size).apply(items_in[:n_changes], items_in[n_changes:], now=NOW)
        for _ in range(2)
    )
    for summary in (first, second):
        assert [item.source_key for item in summary.items] == [
            item.activity.source_key for item in items_in
        ]
        assert Counter(item.result for item in summary.items) == counters(summary)
    done = (APPLIED, ALREADY_APPLIED)
    assert [item.result for item in second.items] == [
        ALREADY_APPLIED if item.result in done else item.result for item in first.items
    ]
    assert crm.count() == 3 + first.contacts_created
    crm.engine.dispose()


# (address the CRM holds, address of a new contact, whether it is the same address)
ADDRESS_CASES = [
    ("ÄRGER@Example.de", "ärger@example.de", True),  # upper-case non-ASCII
    ("öl@example.de", "ÖL@EXAMPLE.DE", True),
    ("  spaced@example.de ", "Spaced@Example.DE", True),
    ("\ttab@example.de\r\n", "tab@example.de", True),  # ASCII whitespace SQL's trim keeps
    ("\xa0nbsp@example.de\u3000", " nbsp@example.de", True),  # Unicode whitespace
    (nfd("müller@bücher.de"), "Müller@Bücher.de", True),  # NFD held, NFC new
    ("MÜLLER2@BÜCHER.DE", nfd(" müller2@bücher.de"), True),  # NFC held, NFD new
    ("\u212aelvin@example.de", "kelvin@example.de", True),  # Kelvin sign: NFC makes it K
    ("O'Brien_100%@Example.de", "o'brien_100%@example.de", True),  # SQL's special characters
    ("arger@example.de", "ärger2@example.de", False),
    ("ärger3@example.de", "arger3@example.de", False),
    ("straße@example.de", "strasse@example.de", False),  # lower-cased, not case-folded
    ("İnci@example.de", "inci@example.de", False),  # İ lower-cases to i and a combining dot
    ("tab\t2@example.de", "tab 2@example.de", False),
]


@pytest.mark.parametrize("many", [False, True], ids=["few new contacts", "many new contacts"])
def test_known_addresses_in_any_case_spacing_or_unicode_form(database_url: str, many: bool) -> None:
    """A new contact whose address the CRM holds in any case, surrounding whitespace or Unicode
    form is skipped, on both databases: with few new contacts their addresses are looked up
    in SQL, with many every address is read; two new contacts with one address create one."""
    engine = sa.create_engine(database_url)
    create_schema(engine, CrmSchema())
    crm = Crm(engine, CrmSchema(), CrmValues())
    held = [contact(10 + i, stored) for i, (stored, _, _) in enumerate(ADDRESS_CASES)]
    crm.fill([*held, contact(9, None)], {})
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    fillers = [signup(f"filler{i}@example.de", f"f{i}") for i in range(600 if many else 0)]
    cases = [signup(new, f"s{i}") for i, (_, new, _) in enumerate(ADDRESS_CASES)]
    twins = [
        signup("Twin@Example.de", "t1"),
        signup(" twin@example.de", "t2"),
        signup("jürgen@example.de", "t3"),
        signup(nfd("JÜRGEN@example.de"), "t4"),
    ]
    summary = crm.writer().apply([], [*cases, *twins, *fillers], now=NOW)
    expected = [EXISTING_ADDRESS if same else APPLIED for _, _, same in ADDRESS_CASES]
    assert [item.result for item in summary.items[: len(cases)]] == expected
    assert [item.result for item in summary.items[len(cases) : len(cases) + 4]] == [
        APPLIED,
        EXISTING_ADDRESS,
        APPLIED,
        EXISTING_ADDRESS,
    ]
    assert crm.count() == len(held) + 1 + summary.contacts_created
    assert summary.contacts_created == expected.count(APPLIED) + 2 + len(fillers)
    looked_up = any("lower(trim(" in sql for sql in statements)
    assert looked_up is not many  # few: the candidates looked up in SQL; many: one pass
    engine.dispose()


@pytest.mark.postgres
def test_known_address_under_a_turkish_collation(postgres_url: str) -> None:
    """PostgreSQL's lower() follows the collation, and a Turkish one lower-cases I to a dotless
    ı: the lookup lower-cases as `address_key` does, whatever the column's collation."""
    engine = sa.create_engine(postgres_url)
    create_schema(engine, CrmSchema())
    with engine.begin() as conn:
        conn.execute(
            sa.text('ALTER TABLE contacts ALTER COLUMN email TYPE text COLLATE "tr-x-icu"')
        )
    crm = Crm(engine, CrmSchema(), CrmValues())
    crm.fill([contact(1, "MIKE@EXAMPLE.DE")], {})
    summary = crm.writer().apply([], [signup("mike@example.de", "s1")], now=NOW)
    assert summary.items == [ItemResult("s1", None, EXISTING_ADDRESS)]
    engine.dispose()


def test_tag_rows_are_stamped_where_the_tags_table_has_a_time(database_url: str) -> None:
    """NEWSLETTER_CRM_SCHEMA__TAG_UPDATED_AT: the tags the import-back adds, to a contact or
    with a new one, carry the write's time."""
    schema = CrmSchema(tag_updated_at="changed_at")
    engine = sa.create_engine(database_url)
    create_schema(engine, schema)
    crm = Crm(engine, schema, CrmValues())
    crm.fill([contact(1, "a@example.de")], {1: ["A"]})
    new = NewContact("neu@example.de", "", "N", "N", frozenset({"Event"}), activity("s"))
    crm.writer().apply([ContactChange(1, activity("k"), add_tags=frozenset({"B"}))], [new], now=NOW)
    tags = crm_tables(schema).tags
    with engine.connect() as conn:
        rows = conn.execute(sa.select(tags.c.tag, tags.c.changed_at).order_by(tags.c.tag))
        assert [tuple(r) for r in rows] == [("A", None), ("B", NOW), ("Event", NOW)]
    engine.dispose()
