"""Eligibility: every bad input is classified, nothing is lost, duplicates resolved."""

from __future__ import annotations

import importlib
from typing import Any

import pandas as pd
import pytest

from newsletter_pipelines.crm.loader import read_csv_rows
from newsletter_pipelines.crm.reader import CONTACT_COLUMNS
from newsletter_pipelines.settings import PROJECT_ROOT, CrmValues
from newsletter_pipelines.sync.eligibility import (
    EXCLUDED_COLUMNS,
    REASONS,
    classify,
    clean_field,
    parse_newsletter,
)
from newsletter_pipelines.sync.email_address import check_email, check_emails

DATA_DIR = PROJECT_ROOT / "data"


def contact(contact_id: int = 1, **values: Any) -> dict[str, Any]:
    """One raw CRM row: an eligible contact unless `values` say otherwise."""
    row: dict[str, Any] = {
        "contact_id": contact_id,
        "salutation": "Frau",
        "first_name": "Anna",
        "last_name": "Schmidt",
        "email": f"anna{contact_id}@example.de",
        "newsletter": "yes",
        "is_private": False,
        "updated_at": "2025-01-01 10:00:00",
        "created_at": "2024-01-01 10:00:00",
        "tags": ("Käufer",),
    }
    row.update(values)
    return row


def frame(*rows: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=[*CONTACT_COLUMNS, "tags"])


def outcome(row: dict[str, Any], values: CrmValues | None = None) -> str:
    result = classify(frame(row), values or CrmValues())
    if len(result.eligible):
        return "eligible"
    return str(result.excluded["reason"].iloc[0])


CASES = [
    ("plain yes", {}, "eligible"),
    ("private, yes", {"is_private": True}, "private"),
    ("private before invalid email", {"is_private": True, "email": "not an email"}, "private"),
    ("private before missing email", {"is_private": True, "email": None}, "private"),
    ("is_private 'ja'", {"is_private": "ja"}, "private"),
    ("is_private unrecognised text", {"is_private": "vielleicht"}, "private"),
    ("is_private 1", {"is_private": 1}, "private"),
    ("is_private 'nein'", {"is_private": "nein"}, "eligible"),
    ("is_private NULL", {"is_private": None}, "eligible"),
    ("is_private 0", {"is_private": 0}, "eligible"),
    ("email NULL", {"email": None}, "missing_email"),
    ("email empty", {"email": ""}, "missing_email"),
    ("email whitespace only", {"email": "   \t"}, "missing_email"),
    ("email with space inside", {"email": "anna schmidt@example.de"}, "invalid_email"),
    ("email with two @", {"email": "anna@schmidt@example.de"}, "invalid_email"),
    ("email with @@", {"email": "anna@@example.de"}, "invalid_email"),
    ("email trailing dot", {"email": "anna@example.de."}, "invalid_email"),
    ("domain without dot", {"email": "anna@localhost"}, "invalid_email"),
    ("quoted local part", {"email": '"anna schmidt"@example.de'}, "invalid_email"),
    ("IP literal domain", {"email": "anna@[192.168.0.1]"}, "invalid_email"),
    ("emoji local part", {"email": "😀@example.de"}, "invalid_email"),
    ("non-ASCII local part (IDN)", {"email": "müller@bücher.de"}, "invalid_email"),
    ("NUL byte in email", {"email": "an\x00na@example.de"}, "invalid_email"),
    ("SQL text as email", {"email": "'; DROP TABLE contacts;--"}, "invalid_email"),
    ("number as email", {"email": 12345}, "invalid_email"),
    ("10,000 characters email", {"email": "a" * 10_000 + "@example.de"}, "invalid_email"),
    ("IDN domain, ASCII local part", {"email": "info@bücher.de"}, "eligible"),
    ("upper case email", {"email": "ANNA.UP@EXAMPLE.DE"}, "eligible"),
    ("email with outer whitespace", {"email": "  anna.ws@example.de \n"}, "eligible"),
    ("newsletter YES", {"newsletter": "YES"}, "eligible"),
    ("newsletter ' yes '", {"newsletter": " yes "}, "eligible"),
    ("newsletter no", {"newsletter": "no"}, "opted_out"),
    ("newsletter No", {"newsletter": "No"}, "opted_out"),
    ("newsletter unspecified", {"newsletter": "unspecified"}, "not_opted_in"),
    ("newsletter 'Ja'", {"newsletter": "Ja"}, "not_opted_in"),
    ("newsletter '1'", {"newsletter": "1"}, "not_opted_in"),
    ("newsletter 1 (int)", {"newsletter": 1}, "not_opted_in"),
    ("newsletter 'true'", {"newsletter": "true"}, "not_opted_in"),
    ("newsletter True (bool)", {"newsletter": True}, "not_opted_in"),
    ("newsletter empty", {"newsletter": ""}, "not_opted_in"),
    ("newsletter NULL", {"newsletter": None}, "not_opted_in"),
    ("name of 10,000 characters", {"first_name": "x" * 10_000}, "eligible"),
    ("NUL byte in name", {"last_name": "Sch\x00midt"}, "eligible"),
    ("emoji name", {"first_name": "Anna 🎉"}, "eligible"),
    ("SQL text name", {"last_name": "Robert'); DROP TABLE contacts;--"}, "eligible"),
    (
        "NULL everywhere but email",
        {
            "salutation": None,
            "first_name": None,
            "last_name": None,
            "updated_at": None,
            "created_at": None,
            "is_private": None,
            "tags": (),
        },
        "eligible",
    ),
    ("unreadable updated_at", {"updated_at": "gestern"}, "eligible"),
    ("NULL everywhere", {k: None for k in CONTACT_COLUMNS if k != "contact_id"}, "missing_email"),
]


@pytest.mark.parametrize(("case", "values", "expected"), CASES, ids=[c[0] for c in CASES])
def test_each_bad_input_is_classified(case: str, values: dict[str, Any], expected: str) -> None:
    assert outcome(contact(**values)) == expected, case


def test_every_reason_is_covered_by_the_table() -> None:
    # 'duplicate' needs two rows: the duplicate tests below cover it
    assert {expected for *_, expected in CASES} | {"duplicate"} == {"eligible", *REASONS}


def test_all_cases_together_lose_no_row() -> None:
    rows = [contact(i, **values) for i, (_, values, _) in enumerate(CASES, start=1)]
    result = classify(frame(*rows))
    assert sum(result.counts.values()) == len(rows)
    ids = list(result.eligible["contact_id"]) + list(result.excluded["contact_id"])
    assert sorted(ids) == list(range(1, len(rows) + 1))
    assert result.counts == {
        "eligible": sum(e == "eligible" for *_, e in CASES),
        **{r: sum(e == r for *_, e in CASES) for r in REASONS},
    }


def test_normalised_email_and_key() -> None:
    result = classify(frame(contact(1, email="  Anna@BÜCHER.de "), contact(2, email="MAX@X.DE")))
    by_id = result.eligible.set_index("contact_id")
    assert by_id.loc[1, "email"] == "Anna@xn--bcher-kva.de"
    assert by_id.loc[1, "email_key"] == "anna@bücher.de"
    assert by_id.loc[2, "email"] == "MAX@x.de"
    assert by_id.loc[2, "email_key"] == "max@x.de"


def test_profile_fields_are_cleaned_for_providers() -> None:
    result = classify(
        frame(
            contact(
                first_name="ä" * 10_000,
                last_name="Sch\x00midt\n",
                salutation=None,
                tags=(" VIP ", "VIP", "", "Käufer"),
            )
        )
    )
    row = result.eligible.iloc[0]
    assert len(row["first_name"].encode()) <= 255 and set(row["first_name"]) == {"ä"}
    assert row["last_name"] == "Sch midt"
    assert row["salutation"] == ""
    assert row["tags"] == ("Käufer", "VIP")
    assert result.profile_fields_cleaned == 2  # truncated first name, NUL in last name
    assert clean_field("Robert'); DROP TABLE contacts;--") == "Robert'); DROP TABLE contacts;--"


def test_newer_no_beats_older_yes() -> None:
    result = classify(
        frame(
            contact(1, email="anna@example.de", newsletter="yes", updated_at="2025-01-01 10:00:00"),
            contact(2, email=" ANNA@example.de", newsletter="no", updated_at="2025-03-01 10:00:00"),
        )
    )
    assert result.eligible.empty
    reasons = dict(zip(result.excluded["contact_id"], result.excluded["reason"], strict=True))
    assert reasons == {1: "duplicate", 2: "opted_out"}
    assert "contact 2" in result.excluded.set_index("contact_id").loc[1, "detail"]


def test_newer_yes_beats_older_no() -> None:
    result = classify(
        frame(
            contact(1, email="anna@example.de", newsletter="no", updated_at="2025-01-01 10:00:00"),
            contact(2, email="Anna@Example.de", newsletter="yes", updated_at="2025-03-01 10:00:00"),
        )
    )
    assert list(result.eligible["contact_id"]) == [2]


def test_tie_in_updated_at_lowest_id_decides() -> None:
    result = classify(
        frame(
            contact(7, email="anna@example.de", newsletter="no"),
            contact(3, email="anna@example.de", newsletter="yes"),
        )
    )
    assert list(result.eligible["contact_id"]) == [3]


def test_missing_updated_at_loses() -> None:
    result = classify(
        frame(
            contact(1, email="anna@example.de", newsletter="no", updated_at=None),
            contact(2, email="anna@example.de", newsletter="yes", updated_at="2020-01-01 00:00:00"),
        )
    )
    assert list(result.eligible["contact_id"]) == [2]


def test_private_rows_do_not_take_part_in_dedupe() -> None:
    result = classify(
        frame(
            contact(1, email="anna@example.de", newsletter="yes", updated_at="2025-01-01 00:00:00"),
            contact(
                2,
                email="anna@example.de",
                newsletter="no",
                is_private=True,
                updated_at="2025-06-01 00:00:00",
            ),
        )
    )
    assert list(result.eligible["contact_id"]) == [1]
    assert result.excluded.set_index("contact_id").loc[2, "email"] is None  # private: not copied


GERMAN = CrmValues(yes="ja", no="nein", unspecified="k. A.")
GERMAN_CASES = [
    ("ja", "eligible"),
    (" JA ", "eligible"),
    ("nein", "opted_out"),
    ("Nein ", "opted_out"),
    ("k. A.", "not_opted_in"),
    ("yes", "not_opted_in"),
    ("no", "not_opted_in"),
    (None, "not_opted_in"),
]


@pytest.mark.parametrize(("value", "expected"), GERMAN_CASES)
def test_newsletter_is_read_through_the_configured_values(value: str | None, expected: str) -> None:
    assert outcome(contact(newsletter=value), GERMAN) == expected


def test_parse_newsletter_defaults_to_yes_and_no() -> None:
    assert [parse_newsletter(v) for v in (" Yes", "NO", "unspecified", "ja", None)] == [
        "yes",
        "no",
        "unknown",
        "unknown",
        "unknown",
    ]
    assert parse_newsletter("JA", GERMAN) == "yes"


def test_excluded_rows_carry_their_newsletter_and_updated_at() -> None:
    result = classify(
        frame(
            contact(1, is_private=True, newsletter="ja", updated_at="2025-02-01 08:00:00+01:00"),
            contact(2, email="anna@example.de", newsletter="ja", updated_at="2025-01-01"),
            contact(3, email="anna@example.de", newsletter="nein", updated_at="2025-03-01"),
            contact(4, email="not an email", newsletter=None, updated_at="gestern"),
            contact(5, email=None, newsletter="yes", updated_at=None),
            contact(6, newsletter="k. A."),
            contact(7, newsletter="ja"),
        ),
        GERMAN,
    )
    assert list(result.excluded.columns) == list(EXCLUDED_COLUMNS)
    assert EXCLUDED_COLUMNS[-2:] == ("newsletter", "updated_at")
    rows = result.excluded.set_index("contact_id")
    assert rows["reason"].to_dict() == {
        1: "private",
        2: "duplicate",
        3: "opted_out",
        4: "invalid_email",
        5: "missing_email",
        6: "not_opted_in",
    }
    assert rows["newsletter"].to_dict() == {
        1: "yes",
        2: "yes",
        3: "no",
        4: "unknown",
        5: "unknown",
        6: "unknown",
    }
    assert rows["updated_at"].dtype == result.eligible["updated_at"].dtype == "datetime64[ns, UTC]"
    assert rows.loc[1, "updated_at"] == pd.Timestamp("2025-02-01 07:00:00", tz="UTC")
    assert rows.loc[3, "updated_at"] == pd.Timestamp("2025-03-01", tz="UTC")
    assert pd.isna(rows.loc[4, "updated_at"]) and pd.isna(rows.loc[5, "updated_at"])
    assert result.eligible["updated_at"].iloc[0] == rows.loc[6, "updated_at"]


def test_demo_data_every_row_accounted_for() -> None:
    rows = list(read_csv_rows(DATA_DIR / "contacts.csv"))
    contacts = pd.DataFrame(rows).rename(columns={"id": "contact_id"})
    contacts["tags"] = [()] * len(contacts)
    result = classify(contacts)
    assert len(result.eligible) + len(result.excluded) == len(contacts)
    assert all(result.counts[r] > 0 for r in REASONS), result.counts


def test_memoised_domain_checks_change_no_result() -> None:
    addresses = [row["email"] for row in read_csv_rows(DATA_DIR / "contacts.csv") if row["email"]]
    addresses += [str(values["email"]) for _, values, _ in CASES if values.get("email")]
    addresses = [a.strip() for a in addresses if a.strip()]
    module = importlib.import_module("email_validator.validate_email")
    original = module.validate_email_domain_name
    assert check_emails(addresses) == [check_email(a) for a in addresses]
    assert module.validate_email_domain_name is original  # restored after the batch
