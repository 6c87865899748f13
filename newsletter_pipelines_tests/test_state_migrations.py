"""The state database's schema migrations on SQLite and PostgreSQL: an empty database upgraded to
head equals the models; a database created before the migrations is stamped with the revision
its layout shows, upgraded, and keeps its rows; production refuses a database behind head;
concurrent first uses; the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from click.testing import CliRunner

from newsletter_pipelines.settings import PROJECT_ROOT
from newsletter_pipelines.state import events, exclusions, ledger
from newsletter_pipelines.state.__main__ import cli
from newsletter_pipelines.state.schema import (
    UPGRADE_COMMAND,
    VERSION_TABLE,
    config,
    current_revision,
    ensure_schema,
    head_revision,
    migration_context,
    upgrade,
)
from newsletter_pipelines.sync.identity import LedgerRow, RowState

MODELS = (ledger.metadata, exclusions.metadata, events.metadata)
LATER_COLUMNS = ("stable_id", "provider_changed_at", "unimported_opt_out")  # 0002 and 0003
AUDIENCE_INDEX = "ix_sync_outcomes_audience"  # dropped by 0004
EVENT = events.NewEvent("a", "brevo", "unsubscribed", "x@example.de", {"n": 1}, "key-1")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'state.sqlite3'}"


@pytest.fixture
def engine(url: str) -> Iterator[sa.Engine]:
    created = sa.create_engine(url)
    yield created
    created.dispose()


def differences(engine: sa.Engine) -> list[Any]:
    """What alembic's autogenerate finds between the database and the models."""
    with engine.connect() as conn:
        return compare_metadata(migration_context(conn), MODELS)


def old_ledger(engine: sa.Engine, without: Sequence[str]) -> LedgerRow:
    """A ledger as the code before the migrations created it, without the columns `without`,
    holding one row (audience `a`), which is returned."""
    old = sa.Table(
        "sync_ledger",
        sa.MetaData(),
        *(
            sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable, index=c.index)
            for c in ledger.ledger.columns
            if c.name not in without
        ),
        sqlite_with_rowid=False,
    )
    old.create(engine)
    stored = LedgerRow(
        member_key="x@example.de",
        email="x@example.de",
        owner="1",
        provider_id="id-x",
        tags=frozenset({"CRM"}),
        state=RowState.SUBSCRIBED,
    )
    values = {
        "audience": "a",
        "member_key": stored.member_key,
        "email": stored.email,
        "owner": stored.owner,
        "provider_id": stored.provider_id,
        "tags": '["CRM"]',
        "state": stored.state.value,
        "last_synced_at": datetime.now(UTC),
    }
    with engine.begin() as conn:
        conn.execute(old.insert(), values)
    return stored


def test_an_empty_database_is_upgraded_to_the_models(engine: sa.Engine) -> None:
    ensure_schema(engine, upgrade=True)
    assert current_revision(engine) == head_revision() == "0004"
    assert differences(engine) == []
    if engine.dialect.name == "sqlite":  # a table option autogenerate does not compare
        with engine.connect() as conn:
            created = conn.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE name = 'sync_ledger'")
            ).scalar_one()
        assert "WITHOUT ROWID" in created


def test_the_migrations_go_down_and_up_again(engine: sa.Engine) -> None:
    upgrade(engine)
    with engine.begin() as conn:
        command.downgrade(config(conn), "0001")
    found = differences(engine)  # the columns of 0002 and 0003 missing, 0004's index there
    assert [d[0] for d in found] == ["add_column"] * 3 + ["remove_index"]
    assert found[-1][1].name == AUDIENCE_INDEX
    with engine.begin() as conn:
        command.downgrade(config(conn), "base")
    assert sa.inspect(engine).get_table_names() == [VERSION_TABLE]
    assert upgrade(engine) is None
    assert differences(engine) == []


@pytest.mark.parametrize(
    ("layout", "without", "others"),
    [
        ("0001", LATER_COLUMNS, False),  # ledger and outcomes only
        ("0001", LATER_COLUMNS[1:], True),  # stable_id came a release before provider_changed_at
        ("0002", LATER_COLUMNS[2:], True),
        ("0003", (), True),
        ("0001", None, True),  # no ledger yet: eligibility tables and the inbox
    ],
)
def test_a_database_from_before_the_migrations_is_stamped_upgraded_and_keeps_its_rows(
    engine: sa.Engine, layout: str, without: tuple[str, ...] | None, others: bool
) -> None:
    stored = None
    if without is not None:
        stored = old_ledger(engine, without)
        ledger.outcomes.create(engine)
        with engine.begin() as conn:  # as the code before the migrations made the log
            conn.execute(sa.text(f"CREATE INDEX {AUDIENCE_INDEX} ON sync_outcomes (audience)"))
    if others:
        exclusions.metadata.create_all(engine)
        events.metadata.create_all(engine)
        events.store_events(engine, [EVENT])
    assert current_revision(engine) is None
    assert upgrade(engine) == layout
    assert current_revision(engine) == head_revision()
    assert differences(engine) == []
    if stored is not None:
        assert ledger.load_ledger(engine, "a") == [stored]
    if others:
        assert [e.dedupe_key for e in events.unprocessed_events(engine, "a")] == ["key-1"]


def test_the_database_may_hold_another_applications_alembic_version(engine: sa.Engine) -> None:
    """Dagster's storage (or a CRM migrated by alembic) in the same database."""
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES ('6df03f4b1efb')"))
    ensure_schema(engine, upgrade=True)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        theirs = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
    assert theirs == "6df03f4b1efb"


def test_a_ledger_of_an_older_layout_is_refused(engine: sa.Engine) -> None:
    sa.Table(
        "sync_ledger", sa.MetaData(), sa.Column("contact_id", sa.Text, primary_key=True)
    ).create(engine)
    with pytest.raises(RuntimeError, match="sync_ledger of an older layout"):
        ensure_schema(engine, upgrade=True)
    assert sa.inspect(engine).get_table_names() == ["sync_ledger"]


def test_production_refuses_a_database_behind_head_and_names_the_command(
    engine: sa.Engine,
) -> None:
    with pytest.raises(RuntimeError, match="revision none, this code needs 0004") as empty:
        ensure_schema(engine, upgrade=False)
    assert f"`{UPGRADE_COMMAND}`" in str(empty.value)
    with engine.begin() as conn:
        command.upgrade(config(conn), "0002")
    with pytest.raises(RuntimeError, match="revision 0002, this code needs 0004") as behind:
        ensure_schema(engine, upgrade=False)
    assert f"`{UPGRADE_COMMAND}`" in str(behind.value)
    assert current_revision(engine) == "0002"  # nothing changed
    ensure_schema(engine, upgrade=True)
    ensure_schema(engine, upgrade=False)  # at head: fine


def test_the_schema_is_checked_once_per_database_and_process(url: str) -> None:
    first = sa.create_engine(url)
    ensure_schema(first, upgrade=True)
    first.dispose()
    second = sa.create_engine(url)
    statements: list[str] = []
    sa.event.listen(second, "before_cursor_execute", lambda *args: statements.append(args[2]))
    ensure_schema(second, upgrade=False)
    second.dispose()
    assert statements == []


def test_each_in_memory_database_is_checked() -> None:
    for engine in (sa.create_engine("sqlite://"), sa.create_engine("sqlite://")):
        ensure_schema(engine, upgrade=True)
        assert current_revision(engine) == head_revision()


def test_other_databases_are_refused_up_front() -> None:
    mysql = sa.create_mock_engine("mysql://", executor=lambda *_: None)
    with pytest.raises(NotImplementedError, match="SQLite and PostgreSQL"):
        ensure_schema(mysql, upgrade=True)  # type: ignore[arg-type]


def test_concurrent_first_uses_upgrade_once(url: str) -> None:
    engines = [sa.create_engine(url) for _ in range(3)]
    barrier = threading.Barrier(len(engines))
    found: list[str | None] = []

    def first_use(engine: sa.Engine) -> None:
        barrier.wait()
        found.append(upgrade(engine))

    threads = [threading.Thread(target=first_use, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for engine in engines:
        engine.dispose()
    # one upgraded the empty database, the others waited and found it at head
    assert sorted(found, key=str) == ["0004", "0004", None]


def test_the_command_line_upgrades_and_tells_the_revisions(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "postgresql":
        parsed = parsed.set(password="s3cret")  # the test server's trust authentication ignores it
    monkeypatch.setenv(
        "NEWSLETTER_STATE_DATABASE_URL", parsed.render_as_string(hide_password=False)
    )
    shown = parsed.render_as_string(hide_password=True)
    runner = CliRunner()
    said = [runner.invoke(cli, [name]) for name in ("current", "upgrade", "current", "upgrade")]
    assert [r.exit_code for r in said] == [0] * 4
    assert not any("s3cret" in r.output for r in said)
    assert [r.output for r in said] == [
        f"{shown}: none (behind head 0004: run `upgrade`)\n",
        f"{shown}: 0004 (head), upgraded from none\n",
        f"{shown}: 0004 (head)\n",
        f"{shown}: 0004 (head), nothing to upgrade\n",
    ]
    assert runner.invoke(cli, ["heads"]).output == "0004 (head)\n"


def test_current_runs_as_a_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.sqlite3'}"
    engine = sa.create_engine(url)
    upgrade(engine)
    engine.dispose()
    done = subprocess.run(
        [sys.executable, "-m", "newsletter_pipelines.state", "current"],
        env={**os.environ, "NEWSLETTER_STATE_DATABASE_URL": url},
        cwd=PROJECT_ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout) == (0, f"{url}: 0004 (head)\n"), done.stderr
