"""The synthetic CRM generator and the committed demo data it produces."""

from __future__ import annotations

import csv
import subprocess
import sys
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from email_validator import EmailNotValidError, validate_email

from newsletter_pipelines.crm.synthetic import (
    CONTACT_COLUMNS,
    DUPLICATE_CASES,
    SINGLE_CASES,
    TAG_COLUMNS,
    case_plan,
    email_key,
    generate_crm,
    iter_crm,
)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
SEVERAL = 3
CsvRow = dict[str, str | None]


def _read(path: Path) -> list[CsvRow]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [
            {k: (None if v == r"\N" else v) for k, v in row.items()}
            for row in csv.DictReader(handle)
        ]


@pytest.fixture(scope="module")
def demo() -> tuple[list[CsvRow], list[CsvRow]]:
    return _read(DATA / "contacts.csv"), _read(DATA / "contact_tags.csv")


def _syntax_ok(email: str) -> bool:
    try:
        validate_email(unicodedata.normalize("NFC", email.strip()), check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    first = generate_crm(3000, seed=7)
    assert first == generate_crm(3000, seed=7)
    assert first != generate_crm(3000, seed=8)
    contacts, tags = first
    streamed = list(iter_crm(3000, seed=7))
    assert [row for row, _ in streamed] == contacts
    assert [tag for _, row_tags in streamed for tag in row_tags] == tags


def test_row_shape_ids_and_tags() -> None:
    contacts, tags = generate_crm(3000)
    assert [row["id"] for row in contacts] == list(range(1, 3001))
    assert all(tuple(row) == CONTACT_COLUMNS for row in contacts)
    assert all(tuple(tag) == TAG_COLUMNS for tag in tags)
    pairs = [(t["contact_id"], t["tag"]) for t in tags]
    assert len(pairs) == len(set(pairs))
    per_contact = Counter(t["contact_id"] for t in tags)
    assert set(per_contact) <= set(range(1, 3001))
    assert max(per_contact.values()) == 3
    assert len(per_contact) < 3000  # some contacts have no tag


def test_case_plan_matches_the_rows() -> None:
    contacts, _ = generate_crm(5000)
    plan = case_plan(5000)
    for name, ids in plan.items():
        size = 1 if name in SINGLE_CASES else DUPLICATE_CASES[name][0]
        assert len(ids) >= SEVERAL * size, name
    assert all(contacts[i - 1]["is_private"] for i in plan["private_newsletter_yes"])
    assert all(contacts[i - 1]["email"] is None for i in plan["email_null"])
    assert all(contacts[i - 1]["newsletter"] == "Ja" for i in plan["newsletter_Ja"])


def test_committed_csvs_are_what_the_script_writes(tmp_path: Path) -> None:
    script = DATA / "generate_demo_crm.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True)
    for name in ("contacts.csv", "contact_tags.csv"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), (
            f"data/{name} is stale: run `python data/generate_demo_crm.py` and commit it"
        )


def _email(test: Callable[[str], bool]) -> Callable[[CsvRow], bool]:
    return lambda row: row["email"] is not None and test(row["email"])


def _domain(email: str) -> str:
    return email.strip().rpartition("@")[2]


def _local(email: str) -> str:
    return email.strip().rpartition("@")[0]


def _has_emoji(text: str | None) -> bool:
    return text is not None and any(ord(ch) >= 0x1F300 or ch == "\u2764" for ch in text)


def _newsletter_is(value: str) -> Callable[[CsvRow], bool]:
    return lambda row: row["newsletter"] == value


def _names(row: CsvRow) -> list[str]:
    return [v for v in (row["first_name"], row["last_name"]) if v is not None]


# Each case is found in the data by what it looks like, independent of the generator's plan.
ROW_CASES: dict[str, Callable[[CsvRow], bool]] = {
    "private": lambda r: r["is_private"] == "true",
    "private with newsletter yes": lambda r: r["is_private"] == "true" and r["newsletter"] == "yes",
    "is_private null": lambda r: r["is_private"] is None,
    "email null": lambda r: r["email"] is None,
    "email empty": lambda r: r["email"] == "",
    "email whitespace only": _email(lambda e: e != "" and e.strip() == ""),
    "email space inside": _email(lambda e: "@" in e and " " in e.strip() and '"' not in e),
    "email several @": _email(lambda e: e.count("@") > 1),
    "email trailing dot": _email(lambda e: e.endswith(".")),
    "email a@b (no dot in domain)": _email(lambda e: "@" in e and "." not in _domain(e)),
    "email quoted local part": _email(lambda e: e.startswith('"') and '"@' in e),
    "email IP literal": _email(lambda e: "@[" in e),
    "email emoji domain": _email(lambda e: _has_emoji(_domain(e))),
    "email emoji local part": _email(lambda e: _has_emoji(_local(e))),
    "email plain text": _email(lambda e: e.strip() != "" and "@" not in e),
    "IDN non-ASCII local part": _email(lambda e: not _local(e).isascii() and "@" in e),
    "IDN domain, ASCII local part": _email(
        lambda e: _local(e).isascii() and not _domain(e).isascii() and not _has_emoji(e)
    ),
    "email upper case": _email(lambda e: "@" in e and e.strip() != e.strip().lower()),
    "email surrounding whitespace": _email(lambda e: e.strip() != "" and e != e.strip()),
    "newsletter no": lambda r: r["newsletter"] == "no",
    "newsletter unspecified": lambda r: r["newsletter"] == "unspecified",
    **{
        f"newsletter {value!r}": _newsletter_is(value)
        for value in ("Ja", "YES", " yes ", "1", "true", "nein", "")
    },
    "newsletter null": lambda r: r["newsletter"] is None,
    "updated_at null": lambda r: r["updated_at"] is None,
    "created_at null": lambda r: r["created_at"] is None,
    "name 10,000 characters": lambda r: any(len(n) >= 10_000 for n in _names(r)),
    "name with NUL": lambda r: any("\x00" in n for n in _names(r)),
    "name with emoji": lambda r: any(_has_emoji(n) for n in _names(r)),
    "name with SQL": lambda r: any(
        sql in n for n in _names(r) for sql in ("DROP TABLE", "DELETE FROM", "' OR '")
    ),
    "name with newline": lambda r: any("\n" in n for n in _names(r)),
    "names all null": lambda r: r["first_name"] is None and r["last_name"] is None,
}


def _groups(contacts: list[CsvRow]) -> list[list[CsvRow]]:
    """Rows sharing one syntactically valid address (by the dedupe key), non-private only."""
    by_key: dict[str, list[CsvRow]] = defaultdict(list)
    for row in contacts:
        if row["email"] and row["is_private"] != "true" and _syntax_ok(row["email"]):
            by_key[email_key(row["email"])].append(row)
    return [rows for rows in by_key.values() if len(rows) > 1]


def _newest(group: list[CsvRow]) -> CsvRow:
    return max(group, key=lambda r: (r["updated_at"] or "", -int(r["id"] or 0)))


def _older(group: list[CsvRow]) -> list[CsvRow]:
    newest = _newest(group)
    return [r for r in group if r is not newest and r["updated_at"] != newest["updated_at"]]


GROUP_CASES: dict[str, Callable[[list[CsvRow]], bool]] = {
    "duplicate differing in case or whitespace": lambda g: len({r["email"] for r in g}) > 1,
    "duplicate, newer says no, older yes": lambda g: (
        _newest(g)["newsletter"] == "no" and any(r["newsletter"] == "yes" for r in _older(g))
    ),
    "duplicate, newer says yes, older no": lambda g: (
        _newest(g)["newsletter"] == "yes" and any(r["newsletter"] == "no" for r in _older(g))
    ),
    "duplicate with updated_at tie": lambda g: (
        len({r["updated_at"] for r in g if r["updated_at"]})
        < len([r for r in g if r["updated_at"]])
    ),
    "duplicate of three rows": lambda g: len(g) >= 3,
    "duplicate with updated_at null": lambda g: any(r["updated_at"] is None for r in g),
    "duplicate differing in Unicode normalisation": lambda g: (
        len({unicodedata.normalize("NFC", r["email"] or "") for r in g})
        < len({r["email"] for r in g})
    ),
}


def case_counts(contacts: list[CsvRow]) -> dict[str, int]:
    """How often each case occurs: rows for row cases, groups of rows for duplicate cases."""
    counts = {name: sum(map(test, contacts)) for name, test in ROW_CASES.items()}
    groups = _groups(contacts)
    counts |= {name: sum(map(test, groups)) for name, test in GROUP_CASES.items()}
    private = {email_key(r["email"]) for r in contacts if r["is_private"] == "true" and r["email"]}
    shared = {email_key(r["email"]) for r in contacts if r["is_private"] != "true" and r["email"]}
    counts["duplicate with a private row"] = len(private & shared)
    return counts


def test_every_case_appears_several_times_in_the_demo_data(
    demo: tuple[list[CsvRow], list[CsvRow]],
) -> None:
    contacts, _ = demo
    counts = case_counts(contacts)
    rare = {name: n for name, n in counts.items() if n < SEVERAL}
    assert not rare, f"cases missing or too rare in data/contacts.csv: {rare}"


def test_demo_proportions_and_tags(demo: tuple[list[CsvRow], list[CsvRow]]) -> None:
    contacts, tags = demo
    assert len(contacts) == 5000
    yes_share = sum(r["newsletter"] == "yes" for r in contacts) / len(contacts)
    assert 0.6 <= yes_share <= 0.78
    salutations = Counter(r["salutation"] for r in contacts)
    for salutation in ("Herr", "Frau", "Mr", "Mrs", "Ms", "Dr.", "Divers", ""):
        assert salutations[salutation] >= SEVERAL, salutation
    per_contact = Counter(t["contact_id"] for t in tags)
    assert set(per_contact.values()) == {1, 2, 3}
    names = Counter(t["tag"] for t in tags)
    for tag in (
        "Käufer",
        "Verkäufer",
        "Mieter",
        "Investor",
        "Newsletter DE",
        "Newsletter EN",
        "VIP",
    ):
        assert names[tag] >= SEVERAL, tag


def test_demo_domains_pass_syntax_checks(demo: tuple[list[CsvRow], list[CsvRow]]) -> None:
    contacts, _ = demo
    plain = [
        r["email"] for r in contacts if r["email"] and r["email"].isascii() and "@" in r["email"]
    ]
    domains = Counter(_domain(e).lower().rstrip(".") for e in plain)
    assert not [d for d in domains if d.endswith((".test", ".local")) or d == "localhost"]
    assert sum(map(_syntax_ok, (e for e in plain))) / len(plain) > 0.95


def test_planned_invalid_addresses_fail_and_valid_ones_pass() -> None:
    contacts, _ = generate_crm(5000)
    for name, ids in case_plan(5000).items():
        emails = [contacts[i - 1]["email"] for i in ids]
        if name.startswith("invalid_email") or name in {"email_empty", "email_whitespace_only"}:
            assert not any(map(_syntax_ok, emails)), name
        elif name in {"idn_non_ascii_local", "idn_ascii_local", "email_upper_case"} or (
            name.startswith("duplicate")
        ):
            assert all(map(_syntax_ok, emails)), name
