"""Text query results column by column: Arrow tables, and frames of pandas' Arrow-backed `str`
dtype (missing values NaN), without a Python object per value.

A SQLite file is read through ADBC, whose C driver fills the Arrow columns straight from
SQLite (a third of the time of fetching rows and building a frame from them), and so is
PostgreSQL (psycopg, psycopg2 URLs) from `ADBC_MIN_ROWS` rows on: its driver copies the rows
into Arrow columns, where fetching them as Python rows held about 0.7 GiB more at the peak for a
million ledger rows. Other databases (in-memory SQLite, other drivers), PostgreSQL results of
fewer rows or whose ADBC read fails: through SQLAlchemy, made columns once fetched, a batch of
rows at a time.

Importing this module makes jemalloc Arrow's memory pool where pyarrow has it: with the default
(mimalloc) much of what the bulk work frees stays resident, about 140 MiB more at the peak of
a diff of a million contacts. Its freed pages go back to the system at once (decay 0): with
jemalloc's default decay, the half GiB of Arrow tables a step of a million rows reads or writes
stayed resident into the next steps, and the push's read of a first sync's diff peaked 0.3 GiB
higher.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Sequence
from urllib.parse import quote

import adbc_driver_sqlite.dbapi
import numpy as np
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa
from adbc_driver_sqlite import StatementOptions
from sqlalchemy.dialects import postgresql

from newsletter_pipelines.db import sqlite_file

TEXT = pd.StringDtype("pyarrow", na_value=np.nan)
"""The dtype of every column of a text frame."""
STRING = pa.large_string()
"""The Arrow type of a text column (`TEXT`'s storage: a frame holds it without a copy)."""
BUSY_TIMEOUT_MS = 5000  # as Python's sqlite3 waits for another connection's write lock
# one batch for the whole result: the driver infers each column's type from its batch, and a
# later batch with text in a column whose first batch held only NULLs would fail
_ONE_BATCH = str(2**30)
_FETCH_ROWS = 50_000  # rows per batch of a read through SQLAlchemy
ADBC_MIN_ROWS = 20_000
"""PostgreSQL results of fewer rows are read through SQLAlchemy: ADBC's driver connects anew
(50-80 ms, loading the server's types), more than reading them row-wise on a connection of the
engine's pool takes (ten text columns: 1,000 rows 4 ms, 10,000 rows 30 ms; 30,000 rows were
a tie at 115-120 ms, 100,000 rows 454 ms against ADBC's 263 ms)."""
log = logging.getLogger(__name__)


def _use_jemalloc() -> None:
    """Make jemalloc Arrow's memory pool, returning freed pages at once (see the module's
    docstring)."""
    with contextlib.suppress(NotImplementedError):  # a pyarrow built without it
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        pa.jemalloc_set_decay_ms(0)


_use_jemalloc()


def text_table(engine: sa.Engine, query: sa.Select[tuple[str | None, ...]]) -> pa.Table:
    """The rows of `query`, whose columns are all text, as an Arrow table of strings."""
    names = [column.name for column in query.selected_columns]
    path = sqlite_file(engine.url)
    if path is None:
        many = _on_postgresql(engine.url) and has_rows(engine, query, ADBC_MIN_ROWS)
        found = _postgresql_table(engine.url, query) if many else None
        return _fetched_table(engine, query, names) if found is None else _texts(found, names)
    compiled = query.compile(dialect=engine.dialect)
    parameters = tuple(compiled.params[name] for name in compiled.positiontup or ())
    # The driver links a SQLite of its own. POSIX locks belong to the process: closing this
    # connection drops the locks Python's sqlite3 holds on the file, so never read here while
    # this process has a transaction open on it (the steps read the ledger between writes).
    uri = f"file:{quote(str(path))}?mode=ro"
    with adbc_driver_sqlite.dbapi.connect(uri) as conn, conn.cursor() as cursor:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.adbc_statement.set_options(**{StatementOptions.BATCH_ROWS.value: _ONE_BATCH})
        cursor.execute(str(compiled), parameters)
        found = cursor.fetch_arrow_table()
    return _texts(found, names)  # a column of NULLs only comes as int64


def _texts(found: pa.Table, names: Sequence[str]) -> pa.Table:
    """A driver's table as `names` of type `STRING`, one chunk each."""
    columns = [column.cast(STRING).combine_chunks() for column in found.columns]
    return pa.table(dict(zip(names, columns, strict=True)))


def has_rows(engine: sa.Engine, query: sa.Select[tuple[str | None, ...]], count: int) -> bool:
    """Whether `query` has at least `count` rows (the database reads at most that many, none of
    their values)."""
    first = query.with_only_columns(sa.literal(1), maintain_column_froms=True).order_by(None)
    counted = sa.select(sa.func.count()).select_from(first.limit(count).subquery())
    with engine.connect() as conn:
        return conn.execute(counted).scalar_one() >= count


def _on_postgresql(url: sa.URL) -> bool:
    return url.get_backend_name() == "postgresql" and url.get_driver_name() in (
        "psycopg",
        "psycopg2",
    )


def _postgresql_table(url: sa.URL, query: sa.Select[tuple[str | None, ...]]) -> pa.Table | None:
    """The rows of `query` through ADBC's PostgreSQL driver (connected with the URL alone, as
    `crm.arrow_reader`); None when it is not installed or the read fails."""
    try:
        dbapi = importlib.import_module("adbc_driver_postgresql.dbapi")
    except ImportError:
        return None
    compiled = query.compile(dialect=postgresql.dialect(paramstyle="numeric_dollar"))
    parameters = tuple(compiled.params[name] for name in compiled.positiontup or ())
    uri = url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with dbapi.connect(uri, autocommit=True) as conn, conn.cursor() as cursor:
            cursor.execute(str(compiled), parameters)
            return cursor.fetch_arrow_table()
    except (dbapi.Error, pa.ArrowException, OSError, ValueError) as exc:
        log.warning("text read row-wise: the ADBC read failed (%s: %s)", type(exc).__name__, exc)
        return None


def _fetched_table(
    engine: sa.Engine, query: sa.Select[tuple[str | None, ...]], names: Sequence[str]
) -> pa.Table:
    """The rows of `query` through SQLAlchemy, made columns a batch of rows at a time (never
    every row as Python objects at once; the driver may still hold the whole result)."""
    batches = []
    with engine.connect() as conn:
        # every column is text: the driver's rows need no result processing; not streamed, so
        # that SQLAlchemy buffers none of the cursor's rows
        cursor = conn.execute(query).cursor
        while rows := cursor.fetchmany(_FETCH_ROWS):
            batches.append(text_rows(rows, names))
    if not batches:
        return text_rows([], names)
    return _texts(pa.concat_tables(batches), names)


def text_rows(rows: Sequence[Sequence[object]], names: Sequence[str]) -> pa.Table:
    """Rows of text values (or None) as an Arrow table of strings."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    return pa.table({n: pa.array(c, STRING) for n, c in zip(names, columns, strict=True)})


def text_frame(table: pa.Table) -> pd.DataFrame:
    """An Arrow table of strings as a frame of `TEXT` columns (no copy of the text)."""
    return table.to_pandas(types_mapper={STRING: TEXT}.get)


def python_values(column: pd.Series) -> list[object]:
    """A column's values as Python objects, None for a missing value (NaN, NA, None)."""
    return column.to_numpy(dtype=object, na_value=None).tolist()
