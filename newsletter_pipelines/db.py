"""Engine creation for the CRM and state databases, with SQLite folders created on demand; bulk
statements they share."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from more_itertools import chunked

IN_BATCH = 500  # values per IN (...) list


def create_engine(url: str) -> sa.Engine:
    """An engine for `url`; for a SQLite file its folder is created first."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return sa.create_engine(url)


def sqlite_file(url: sa.URL) -> Path | None:
    """The file of a SQLite URL naming a plain file, resolved; None for anything else: another
    database, a database in memory (another connection sees none of it), a `file:` URI or URL
    query options (which another driver would not read alike)."""
    if url.get_backend_name() != "sqlite" or url.query:
        return None
    if url.database in (None, "", ":memory:") or url.database.startswith("file:"):
        return None
    return Path(url.database).resolve()


def safe_url(url: str) -> str:
    """The URL with its password hidden, fit for logs and metadata."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def matching(
    column: sa.ColumnElement[Any], values: Sequence[Any], dialect: sa.Dialect
) -> Iterator[sa.ColumnElement[bool]]:
    """Conditions `column IN values` that together cover `values`: on PostgreSQL, for a typed
    column, one `column = ANY(:array)` (a single parameter: psycopg parses a long IN list
    slowly), else one IN list per `IN_BATCH` values."""
    if not values:
        return
    if dialect.name == "postgresql" and not isinstance(column.type, sa.types.NullType):
        yield column == sa.any_(sa.bindparam(None, list(values), type_=sa.ARRAY(column.type)))
        return
    for batch in chunked(values, IN_BATCH):
        yield column.in_(batch)


def bulk_insert(
    conn: sa.Connection,
    table: sa.TableClause,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    """Insert `rows` (values of `columns`, in that order) into `table` in the connection's
    transaction, without SQLAlchemy's per-row parameter handling: by COPY on psycopg (a few
    times faster than its pipelined executemany), else as one executemany of plain tuples where
    the driver takes positional parameters (SQLite), else through SQLAlchemy. Driver errors are
    raised as SQLAlchemy's `DBAPIError`."""
    if not rows:
        return
    statement = sa.insert(table)
    compiled = statement.compile(dialect=conn.dialect, column_keys=list(columns))
    if conn.dialect.driver == "psycopg":
        _copy(conn, table, columns, _bound(table, columns, rows, conn.dialect))
    elif compiled.positional:
        order = [columns.index(name) for name in compiled.positiontup or ()]
        bound = _bound(table, columns, rows, conn.dialect)
        if order != sorted(order):
            bound = [tuple(row[i] for i in order) for row in bound]
        conn.exec_driver_sql(compiled.string, bound)
    else:
        conn.execute(statement, [dict(zip(columns, row, strict=True)) for row in rows])


def _bound(
    table: sa.TableClause, columns: Sequence[str], rows: Sequence[tuple[Any, ...]], dialect: Any
) -> Sequence[tuple[Any, ...]]:
    """`rows` with each value as its column's type binds it (SQLite: datetimes as text),
    column by column."""
    processors = [
        table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in columns
    ]
    if not any(processors):
        return rows
    values = [
        list(map(process, column)) if process else column
        for process, column in zip(processors, zip(*rows, strict=True), strict=True)
    ]
    return list(zip(*values, strict=True))


def _copy(
    conn: sa.Connection,
    table: sa.TableClause,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    preparer = conn.dialect.identifier_preparer
    names = ", ".join(preparer.quote(name) for name in columns)
    sql = f"COPY {preparer.format_table(table)} ({names}) FROM STDIN"
    dbapi_error = conn.dialect.loaded_dbapi.Error
    cursor = conn.connection.cursor()
    try:
        with cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row(row)
    except dbapi_error as exc:
        raise sa.exc.DBAPIError.instance(sql, None, exc, dbapi_error) from exc
    finally:
        cursor.close()
