"""The state database's schema under alembic migrations (`migrations/versions`, configured here
in code: no alembic.ini).

`ensure_schema` checks a database once per process: the embedded deployment upgrades it,
production raises until `python -m newsletter_pipelines.state upgrade` has run. A database
created before the migrations (its tables, no version table) is stamped with the revision its
ledger's columns show, then upgraded. The revision is kept in `VERSION_TABLE`, not alembic's
default `alembic_version`: the state tables may share a database with Dagster's storage or an
application migrated by alembic.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from newsletter_pipelines.db import safe_url

UPGRADE_COMMAND = "python -m newsletter_pipelines.state upgrade"
VERSION_TABLE = "state_schema_version"
_BASELINE = "0001"
"""The first revision: it creates the tables a database lacks (all of them when it is empty)."""
_TABLES = (
    "sync_ledger",
    "sync_outcomes",
    "eligibility_exclusions",
    "eligibility_baseline",
    "provider_events",
)
# PostgreSQL advisory lock held by the transaction of an upgrade
_LOCK_KEY = zlib.crc32(b"newsletter_pipelines.state.schema")
_checked: set[str] = set()  # URLs of the databases `ensure_schema` found at head
_checking = threading.Lock()


def config(connection: sa.Connection | None = None) -> Config:
    """The alembic configuration of the migrations; commands run on `connection`."""
    alembic_config = Config()
    alembic_config.set_main_option("script_location", "newsletter_pipelines.state:migrations")
    alembic_config.attributes["connection"] = connection
    return alembic_config


def migration_context(conn: sa.Connection) -> MigrationContext:
    """Alembic's view of the database on `conn` (its revision in `VERSION_TABLE`)."""
    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})


@cache
def head_revision() -> str:
    """The revision the migrations end at."""
    head = ScriptDirectory.from_config(config()).get_current_head()
    assert head is not None  # alembic raises for several heads
    return head


def current_revision(engine: sa.Engine) -> str | None:
    """The revision the database is at; None when it has none (empty, or created before the
    migrations)."""
    with engine.connect() as conn:
        return migration_context(conn).get_current_revision()


def upgrade(engine: sa.Engine) -> str | None:
    """Upgrade the database to `head_revision()` in one transaction that no other process's
    upgrade overlaps. Returns the revision it was at: for a database created before the
    migrations, the one it was stamped with; None for an empty one."""
    _refuse_other_databases(engine)
    with _locked(engine) as conn:
        return _upgrade(conn)


def ensure_schema(engine: sa.Engine, *, upgrade: bool) -> None:
    """Make sure the database is at `head_revision()`, once per database and process: upgrade it
    (`upgrade`: the embedded deployment, tests, benchmarks), or raise RuntimeError naming the
    command that does (production)."""
    _refuse_other_databases(engine)
    url = engine.url
    in_memory = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
    key = url.render_as_string(hide_password=False)
    with _checking:
        if key in _checked:
            return
        current = current_revision(engine)
        if current != head_revision():
            if not upgrade:
                raise RuntimeError(
                    f"the state database at {safe_url(key)} is at schema revision "
                    f"{current or 'none'}, this code needs {head_revision()}: run "
                    f"`{UPGRADE_COMMAND}` (with the same NEWSLETTER_STATE_DATABASE_URL) first"
                )
            with _locked(engine) as conn:
                _upgrade(conn)
        if not in_memory:  # each in-memory engine is a database of its own
            _checked.add(key)


def _refuse_other_databases(engine: sa.Engine) -> None:
    if engine.dialect.name not in ("sqlite", "postgresql"):
        raise NotImplementedError(
            f"the state database supports SQLite and PostgreSQL, not {engine.dialect.name}"
        )


@contextmanager
def _locked(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A transaction no other process's upgrade overlaps: PostgreSQL, an advisory lock; SQLite,
    the database's write lock taken up front (BEGIN IMMEDIATE)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        else:  # the driver begins no transaction before DDL: the whole upgrade in this one
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield conn


def _upgrade(conn: sa.Connection) -> str | None:
    """Stamp a database created before the migrations, then upgrade it to head; returns the
    revision it was at (see `upgrade`)."""
    alembic_config = config(conn)
    current = migration_context(conn).get_current_revision()
    if current is None and (current := _layout_revision(conn)) is not None:
        command.upgrade(alembic_config, _BASELINE)  # the tables it lacks
        command.stamp(alembic_config, current)
    command.upgrade(alembic_config, "head")
    return current


def _layout_revision(conn: sa.Connection) -> str | None:
    """The revision the tables of a database created before the migrations show (their ledger's
    columns); None without any of them. A ledger of an older layout is refused."""
    inspector = sa.inspect(conn)
    existing = set(inspector.get_table_names()) & set(_TABLES)
    if "sync_ledger" not in existing:
        return _BASELINE if existing else None
    columns = {c["name"] for c in inspector.get_columns("sync_ledger")}
    if "member_key" not in columns:
        raise RuntimeError(
            "the state database holds a sync_ledger of an older layout (one row per CRM "
            "contact); drop the table sync_ledger, or point NEWSLETTER_STATE_DATABASE_URL at a "
            "new database: the next full sync rebuilds it from the provider"
        )
    if "unimported_opt_out" in columns:
        return "0003"
    if "provider_changed_at" in columns:
        return "0002"
    return _BASELINE
