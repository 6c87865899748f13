"""Text query results column by column: Arrow tables, and frames of pandas' Arrow-backed `str`
dtype (missing values NaN), without a Python object per value.

A SQLite file is read through ADBC, whose C driver fills the Arrow columns straight from
SQLite (a third of the time of fetching rows and building a frame from them); other databases
(PostgreSQL, in-memory SQLite) through SQLAlchemy, made columns once fetched.

Importing this module makes jemalloc Arrow's memory pool where pyarrow has it: with the default
(mimalloc) much of what the bulk work frees stays resident, about 140 MiB more at the peak of
a diff of a million contacts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from urllib.parse import quote

import adbc_driver_sqlite.dbapi
import numpy as np
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa
from adbc_driver_sqlite import StatementOptions

from newsletter_pipelines.db import sqlite_file

TEXT = pd.StringDtype("pyarrow", na_value=np.nan)
"""The dtype of every column of a text frame."""
STRING = pa.large_string()
"""The Arrow type of a text column (`TEXT`'s storage: a frame holds it without a copy)."""
BUSY_TIMEOUT_MS = 5000  # as Python's sqlite3 waits for another connection's write lock
# one batch for the whole result: the driver infers each column's type from its batch, and a
# later batch with text in a column whose first batch held only NULLs would fail
_ONE_BATCH = str(2**30)


def _use_jemalloc() -> None:
    """Make jemalloc Arrow's memory pool (see the module's docstring)."""
    with contextlib.suppress(NotImplementedError):  # a pyarrow built without it
        pa.set_memory_pool(pa.jemalloc_memory_pool())


_use_jemalloc()


def text_table(engine: sa.Engine, query: sa.Select[tuple[str | None, ...]]) -> pa.Table:
    """The rows of `query`, whose columns are all text, as an Arrow table of strings."""
    names = [column.name for column in query.selected_columns]
    path = sqlite_file(engine.url)
    if path is None:
        with engine.connect() as conn:
            # every column is text: the driver's rows need no result processing
            rows = conn.execute(query).cursor.fetchall()
        return text_rows(rows, names)
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
    # a column of NULLs only comes as int64
    return found.rename_columns(names).cast(pa.schema([(name, STRING) for name in names]))


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
