"""Dagster's PostgreSQL run and event log storages keeping a connection open (`dagster.yaml`).

dagster-postgres opens its engines with SQLAlchemy's `NullPool`: every query opens a new
PostgreSQL connection and closes it. A run stores ~100 events, each one to three connections
(the event, then for asset and check events its index rows), so a sync of 10 contacts spent
most of its seconds connecting (a PostgreSQL backend started per connection: 3–20 ms each,
more the busier the machine). These subclasses change only that: their engines keep one
connection per process for reuse and open more only while it is taken (several threads),
closing those after use as before: a process never holds more than one idle connection per
storage. A connection idle for `PING_AFTER_IDLE_SECONDS` is pinged before it is used again (a
restarted server or a dropped idle connection costs a reconnect, not a failure); one used just
before is not (a ping before every use would be a third of a run's round trips). The event log
also remembers the tables it found (`has_table`) and stores an event without the NOTIFY
dagster-postgres sends after it (`store_event`). Everything else, tables and migrations
included, is dagster-postgres's.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Mapping
from typing import Any, Self

import sqlalchemy as sa
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster._serdes import ConfigurableClassData
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage
from dagster_postgres.utils import (
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
)

IDLE_CONNECTIONS = 1  # kept open per storage and process
RECYCLE_SECONDS = 3600  # a kept connection older than this is replaced
PING_AFTER_IDLE_SECONDS = 5.0
_RETURNED = "newsletter_pipelines.returned_at"


def pooled_engine(postgres_url: str, token_provider: Any) -> sa.Engine:
    """An engine as dagster-postgres makes it (autocommit, its token hook), keeping
    `IDLE_CONNECTIONS` open; after a fork the child opens its own."""
    engine = create_pg_engine(
        postgres_url,
        token_provider,
        isolation_level="AUTOCOMMIT",
        pool_size=IDLE_CONNECTIONS,
        max_overflow=-1,  # never waits for a connection: more are opened, and closed after use
        pool_recycle=RECYCLE_SECONDS,
    )
    sa.event.listen(engine, "checkin", _returned)
    sa.event.listen(engine, "checkout", _ping_when_idle)
    ref = weakref.ref(engine)

    def forget_parents_connections() -> None:
        if (alive := ref()) is not None:
            alive.dispose(close=False)

    os.register_at_fork(after_in_child=forget_parents_connections)
    return engine


def _returned(_dbapi_connection: Any, record: Any) -> None:
    record.info[_RETURNED] = time.monotonic()


def _ping_when_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """SQLAlchemy's pessimistic disconnect handling, for connections idle a while: a failed
    ping (DisconnectionError) makes the pool replace the connection and check out again."""
    returned = record.info.get(_RETURNED)
    if returned is None or time.monotonic() - returned < PING_AFTER_IDLE_SECONDS:
        return  # new, or used a moment ago
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
    except Exception as exc:  # whatever the driver raises for a dead connection
        raise sa.exc.DisconnectionError(f"idle connection lost: {exc}") from exc


def _arguments(
    inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "inst_data": inst_data,
        "postgres_url": pg_url_from_config(config_value),
        "should_autocreate_tables": config_value.get("should_autocreate_tables", True),
        "token_provider": get_token_provider_from_config(config_value),
    }


class _Pooled:
    """Replaces the engine of the dagster-postgres storage it is mixed into (see the module)."""

    _engine: sa.Engine

    def __init__(self, postgres_url: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(postgres_url, *args, **kwargs)  # type: ignore[call-arg]
        self._engine.dispose()
        self._engine = pooled_engine(self.postgres_url, self._token_provider)  # type: ignore[attr-defined]

    @classmethod
    def from_config_value(  # ty: ignore[invalid-method-override]
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> Self:
        return cls(**_arguments(inst_data, config_value))

    def dispose(self) -> None:
        super().dispose()  # type: ignore[misc]
        self._engine.dispose()


class PooledPostgresEventLogStorage(_Pooled, PostgresEventLogStorage):
    """`PostgresEventLogStorage` keeping a connection open and the tables it found (see the
    module)."""

    def __init__(self, postgres_url: str, *args: Any, **kwargs: Any) -> None:
        self._tables_found: set[str] = set()
        super().__init__(postgres_url, *args, **kwargs)

    def store_event(self, event: EventLogEntry) -> None:
        """Dagster's SQL event log's `store_event`: the event, then for asset and check events
        their index rows. dagster-postgres adds a NOTIFY after each event for the watchers of
        older Dagster versions (1.13 polls for new events): a statement per event, and the
        server's queue of notifications, which every committing NOTIFY holds a lock on, for
        nothing in a deployment of one Dagster version."""
        SqlEventLogStorage.store_event(self, event)

    def has_table(self, table_name: str) -> bool:
        """Whether the table exists, the server's catalog asked until it does: dagster-postgres
        asks at every asset event (3 ms each on a busy machine, 21 times a sync). A table is
        not dropped under a running instance; one missing is asked for again (a migration
        may add it)."""
        if table_name not in self._tables_found:
            if not super().has_table(table_name):
                return False
            self._tables_found.add(table_name)
        return True


class PooledPostgresRunStorage(_Pooled, PostgresRunStorage):
    """`PostgresRunStorage` keeping a connection open (see the module)."""
