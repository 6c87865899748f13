"""CRM access: schema, demo loading (SQLite and PostgreSQL), mapped names, reading raw values."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from newsletter_pipelines.crm.__main__ import cli
from newsletter_pipelines.crm.changes import latest_change
from newsletter_pipelines.crm.editor import edit_contact
from newsletter_pipelines.crm.embedded import ensure_demo_crm
from newsletter_pipelines.crm.errors import CrmError
from newsletter_pipelines.crm.loader import insert_rows, load_demo, read_csv_rows
from newsletter_pipelines.crm.reader import read_contacts
from newsletter_pipelines.crm.schema import create_schema
from newsletter_pipelines.settings import CrmSchema
from newsletter_pipelines.sync.eligibility import classify
from newsletter_pipelines_tests.conftest import DATA_DIR

DEMO_CONTACTS = sum(1 for _ in read_csv_rows(DATA_DIR / "contacts.csv"))
DEMO_TAGS = sum(1 for _ in read_csv_rows(DATA_DIR / "contact_tags.csv"))


def test_load_demo_into_sqlite_and_read_back(demo_crm_file: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{demo_crm_file}")
    contacts = read_contacts(engine, CrmSchema())
    assert len(contacts) == DEMO_CONTACTS
    assert int(contacts["tags"].map(len).sum()) == DEMO_TAGS
    assert contacts["contact_id"].is_unique


def test_load_demo_refuses_to_overwrite_without_replace(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crm.sqlite3'}"
    assert load_demo(url, DATA_DIR) == (DEMO_CONTACTS, DEMO_TAGS)
    with pytest.raises(CrmError, match="already holds"):
        load_demo(url, DATA_DIR)
    assert load_demo(url, DATA_DIR, replace=True) == (DEMO_CONTACTS, DEMO_TAGS)


def test_cli_load_demo(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    result = CliRunner().invoke(cli, ["load-demo", "--url", url])
    assert result.exit_code == 0, result.output
    assert f"loaded {DEMO_CONTACTS} contacts" in result.output
    again = CliRunner().invoke(cli, ["load-demo", "--url", url])
    assert again.exit_code == 1 and "--replace" in again.output


def test_mapped_table_and_column_names(tmp_path: Path) -> None:
    schema = CrmSchema(
        contacts_table="kontakte",
        email="mail",
        newsletter="nl_flag",
        tags_table="kontakt_tags",
        tag="schlagwort",
    )
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'mapped.sqlite3'}")
    create_schema(engine, schema)
    rows = [
        {
            "id": 1,
            "email": "a@example.de",
            "newsletter": "yes",
            "is_private": False,
            "updated_at": "2025-01-01 00:00:00",
        }
    ]
    insert_rows(engine, schema, rows, [{"contact_id": 1, "tag": "VIP"}])
    assert set(sa.inspect(engine).get_table_names()) == {"kontakte", "kontakt_tags", "activities"}
    contacts = read_contacts(engine, schema)
    assert list(contacts["email"]) == ["a@example.de"]
    assert list(contacts["tags"]) == [("VIP",)]
    assert len(classify(contacts).eligible) == 1


def test_missing_table_is_a_clear_error(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    with pytest.raises(CrmError, match="cannot read the CRM tables 'contacts'"):
        read_contacts(engine, CrmSchema())


def test_wrong_types_in_a_loose_crm_are_read_and_classified(tmp_path: Path) -> None:
    """A CRM with untyped columns (SQLite) holding text where dates and flags belong."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'loose.sqlite3'}")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE contacts (id, salutation, first_name, last_name, email, newsletter,"
                " is_private, updated_at, created_at)"
            )
        )
        conn.execute(sa.text("CREATE TABLE contact_tags (contact_id, tag)"))
        conn.execute(
            sa.text(
                "INSERT INTO contacts VALUES"
                " (1, NULL, 42, x'00ff', 'a@example.de', 1, 'ja', 'gestern', 7),"
                " (2, NULL, NULL, NULL, 'b@example.de', 'yes', 'nein', 20250101, NULL),"
                " (3, NULL, NULL, NULL, 99, 'yes', NULL, NULL, NULL)"
            )
        )
        conn.execute(sa.text("INSERT INTO contact_tags VALUES (2, NULL), (2, 'VIP')"))
    contacts = read_contacts(engine, CrmSchema())
    result = classify(contacts)
    assert result.counts["private"] == 1
    assert result.counts["eligible"] == 1
    assert result.counts["invalid_email"] == 1
    assert list(result.eligible["tags"]) == [("VIP",)]


def test_embedded_demo_crm_is_built_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'home' / 'crm.sqlite3'}"
    assert ensure_demo_crm(url, DATA_DIR) is True
    assert ensure_demo_crm(url, DATA_DIR) is False
    assert not list((tmp_path / "home").glob("*.partial"))


@pytest.mark.postgres
def test_demo_crm_on_postgresql(postgres_url: str, demo_crm_file: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["load-demo", "--url", postgres_url])
    assert result.exit_code == 0, result.output
    pg = read_contacts(sa.create_engine(postgres_url), CrmSchema())
    copy = tmp_path / "copy.sqlite3"
    shutil.copy(demo_crm_file, copy)
    lite = read_contacts(sa.create_engine(f"sqlite:///{copy}"), CrmSchema())
    assert len(pg) == len(lite) == DEMO_CONTACTS
    assert isinstance(pg["updated_at"].dropna().iloc[0], datetime)
    # the same contacts give the same eligibility on both databases (NUL replaced on PostgreSQL)
    assert classify(pg).counts == classify(lite).counts


def test_cli_edit_bumps_updated_at_with_every_change(demo_crm_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "crm.sqlite3"
    shutil.copy(demo_crm_file, path)
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    before = latest_change(engine, CrmSchema())
    args = ["edit", "17", "--first-name", "Jana", "--newsletter", "no", "--tags", "VIP, Käufer"]
    result = CliRunner().invoke(cli, [*args, "--url", url])
    assert result.exit_code == 0, result.output
    assert "first_name, newsletter, tags changed" in result.output
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT first_name, newsletter FROM contacts WHERE id = 17"))
        assert tuple(row.one()) == ("Jana", "no")
        tags = conn.execute(sa.text("SELECT tag FROM contact_tags WHERE contact_id = 17"))
        assert sorted(t for (t,) in tags) == ["Käufer", "VIP"]
    latest = latest_change(engine, CrmSchema())
    assert latest is not None and latest.contact_id == "17"
    assert before is not None and latest.updated_at > before.updated_at
    missing = CliRunner().invoke(cli, ["edit", "999999", "--last-name", "X", "--url", url])
    assert missing.exit_code == 1 and "no CRM contact with id 999999" in missing.output
    nothing = CliRunner().invoke(cli, ["edit", "17", "--url", url])
    assert nothing.exit_code == 2 and "nothing to change" in nothing.output
    engine.dispose()


def test_the_documented_edit_command_runs_as_a_module(demo_crm_file: Path, tmp_path: Path) -> None:
    """`python -m newsletter_pipelines.crm edit …`, as the README shows it, in its own process."""
    path = tmp_path / "crm.sqlite3"
    shutil.copy(demo_crm_file, path)
    url = f"sqlite:///{path}"
    command = [sys.executable, "-m", "newsletter_pipelines.crm", "edit", "19"]
    done = subprocess.run(
        [*command, "--first-name", "Walk", "--url", url],
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "first_name changed" in done.stdout
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT first_name FROM contacts WHERE id = 19"))
        assert row.scalar_one() == "Walk"
    engine.dispose()


def test_an_edit_stamps_the_tag_rows_when_the_tag_table_has_a_time(
    demo_crm_file: Path, tmp_path: Path
) -> None:
    path = tmp_path / "crm.sqlite3"
    shutil.copy(demo_crm_file, path)
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE contact_tags ADD COLUMN changed_at TIMESTAMP"))
    schema = CrmSchema(tag_updated_at="changed_at")
    when = datetime(2030, 1, 1, 12, 0, 0)
    edit_contact(engine, schema, "17", {}, tags=frozenset({"VIP"}), now=when)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT tag, changed_at FROM contact_tags WHERE contact_id = 17")
        )
        assert [(tag, str(at)) for tag, at in rows] == [("VIP", "2030-01-01 12:00:00.000000")]
    engine.dispose()
