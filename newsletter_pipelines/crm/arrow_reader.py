"""CRM queries read column-wise through Arrow (ADBC drivers), typed as the row-wise read types
them: a column is what `inferred` makes of the values the SQLAlchemy driver would return.

Used for a SQLite file (`sqlite:///path`, pysqlite) and for PostgreSQL (psycopg, psycopg2) when
the ADBC driver is installed. The ADBC connection is made from the engine's URL alone: the
engine's `connect_args` and connect events do not apply to it. Any other database, a column
type whose values differ between the drivers (PostgreSQL: numeric, timestamptz, bytea, JSON, …),
a SQLite column holding more than one storage class (ADBC would convert them to one type) or any
failure gives None: the caller reads rows instead (`crm.reader`).

The first query is read in the calling thread; the others, and on SQLite the storage-class check,
in a second thread on connections of their own (as the row-wise read's queries, each its own
transaction).
"""

from __future__ import annotations

import importlib
import logging
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from types import ModuleType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from pandas._libs import lib
from pandas._typing import ArrayLike
from pandas.core.dtypes.cast import maybe_infer_to_datetimelike

from newsletter_pipelines.db import sqlite_file

log = logging.getLogger(__name__)

_SHARED_SAMPLE = 50_000  # text values looked at to decide whether equal text is one object
# distinct values per value of a text column, past which each text is its own object (both reads)
SHARED_MAX_SHARE = 0.25
# the SQLite storage class of each Arrow type the ADBC SQLite driver infers
_SQLITE_CLASSES = {
    pa.int64(): "integer",
    pa.float64(): "real",
    pa.string(): "text",
    pa.binary(): "blob",
}
# rows per batch: the ADBC SQLite driver types a column by its first batch (NULL alone: integer)
_SQLITE_BATCH_ROWS = 65_536
StorageClasses = list[list[set[str]]]  # per query, per column: SQLite's `typeof` of its values


def inferred(column: np.ndarray) -> ArrayLike:
    """What `DataFrame.from_records` makes of an object column (numbers, datetimes typed)."""
    converted = lib.maybe_convert_objects(column)
    if converted.dtype == object:
        converted = maybe_infer_to_datetimelike(converted)
    return converted


def adbc_source(url: sa.URL) -> tuple[str, str] | None:
    """The ADBC DBAPI module and the URI it connects with for `url`; None without one."""
    backend, driver = url.get_backend_name(), url.get_driver_name()
    if backend == "sqlite" and driver == "pysqlite":
        path = sqlite_file(url)
        return None if path is None else ("adbc_driver_sqlite.dbapi", str(path))
    if backend == "postgresql" and driver in ("psycopg", "psycopg2"):
        uri = url.set(drivername="postgresql").render_as_string(hide_password=False)
        return "adbc_driver_postgresql.dbapi", uri
    return None


def read_columns(
    engine: sa.Engine, queries: Sequence[sa.Select], objects: Sequence[Sequence[bool]]
) -> list[list[ArrayLike]] | None:
    """The columns of each query through ADBC, or None: then read rows.

    Column j of query i is typed as `inferred` types the driver's values, or with
    `objects[i][j]` left as those values (an object array; integers without NULL as int64).
    """
    source = adbc_source(engine.url)
    if source is None:
        log.info("CRM read row-wise: no ADBC driver for %s", engine.url.drivername)
        return None
    module, uri = source
    try:
        dbapi = importlib.import_module(module)
    except ImportError:
        log.info("CRM read row-wise: %s is not installed", module.partition(".")[0])
        return None
    statements = [_sql(query, engine.dialect) for query in queries]
    sqlite = "sqlite" in module
    checks = [_sql(_storage_query(q), engine.dialect) for q in queries] if sqlite else None
    options = {"adbc.sqlite.query.batch_rows": str(_SQLITE_BATCH_ROWS)} if sqlite else {}
    try:
        with ThreadPoolExecutor(1) as pool:  # on a second core: the other queries, the check
            later = pool.submit(_fetch_later, dbapi, uri, statements[1:], options, checks)
            first = _fetch(dbapi, uri, statements[:1], options)
            columns = [_columns(first[0], objects[0])]  # while the others are read
            rest, stored = later.result()
        refusal = _refusal([*first, *rest], stored)
        if refusal:
            log.info("CRM read row-wise: %s", refusal)
            return None
        columns += [_columns(table, kinds) for table, kinds in zip(rest, objects[1:], strict=True)]
    except (dbapi.Error, sqlite3.Error, pa.ArrowException, OSError, ValueError) as exc:
        log.warning("CRM read row-wise: the ADBC read failed (%s: %s)", type(exc).__name__, exc)
        return None
    log.info("CRM read column-wise through %s", module.partition(".")[0])
    return columns


def _columns(table: pa.Table, objects: Sequence[bool]) -> list[ArrayLike]:
    """The table's columns converted (`objects`: per column, whether left as values)."""
    return [_converted(table.column(j), as_objects=o) for j, o in enumerate(objects)]


def _sql(query: sa.Select, dialect: sa.Dialect) -> str:
    return str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def _fetch(
    dbapi: ModuleType, uri: str, statements: Sequence[str], options: dict[str, str]
) -> list[pa.Table]:
    """Each statement's result as an Arrow table, its text checked to be UTF-8 (the drivers
    refuse to decode other text)."""
    tables = []
    with dbapi.connect(uri, autocommit=True) as conn, conn.cursor() as cursor:
        for statement in statements:
            cursor.adbc_statement.set_options(**options)
            cursor.execute(statement)
            table = cursor.fetch_arrow_table()
            table.validate(full=True)
            tables.append(table)
    return tables


def _storage_query(query: sa.Select) -> sa.Select:
    """SQLite: the storage classes (`typeof`) each column of `query` holds, comma-separated."""
    inner = query.order_by(None).subquery()
    return sa.select(*(sa.func.group_concat(sa.distinct(sa.func.typeof(c))) for c in inner.c))


def _fetch_later(
    dbapi: ModuleType,
    uri: str,
    statements: Sequence[str],
    options: dict[str, str],
    checks: Sequence[str] | None,
) -> tuple[list[pa.Table], StorageClasses | None]:
    """`_fetch` of `statements` on a connection of its own, and SQLite's storage classes of every
    query (`checks`) on another."""
    tables = _fetch(dbapi, uri, statements, options)
    return tables, None if checks is None else _storage_classes(uri, checks)


def _storage_classes(path: str, checks: Sequence[str]) -> StorageClasses:
    with closing(sqlite3.connect(path)) as conn:
        return [
            [set((found or "").split(",")) - {"", "null"} for found in conn.execute(sql).fetchone()]
            for sql in checks
        ]


def _refusal(tables: Sequence[pa.Table], stored: StorageClasses | None) -> str | None:
    """Why a column cannot stand for the driver's values (None: all can)."""
    for i, table in enumerate(tables):
        for j, field in enumerate(table.schema):
            if stored is None and not _same_values_on_postgresql(field.type):
                return f"column {field.name!r} has the type {field.type}"
            if stored is not None and not stored[i][j] <= {_SQLITE_CLASSES.get(field.type)}:
                return f"column {field.name!r} holds {', '.join(sorted(stored[i][j]))} values"
    return None


def _same_values_on_postgresql(kind: pa.DataType) -> bool:
    """Types whose values from psycopg and psycopg2 equal Arrow's (`to_pylist`)."""
    return (
        pa.types.is_integer(kind)
        or kind in (pa.float64(), pa.bool_(), pa.string(), pa.large_string(), pa.date32())
        or (pa.types.is_timestamp(kind) and kind.tz is None)
    )


def _converted(column: pa.ChunkedArray, *, as_objects: bool) -> ArrayLike:
    """One column typed as `inferred` types the driver's values (`as_objects`: left as them)."""
    kind = column.type
    if not len(column):
        return np.empty(0, dtype=object)  # the row-wise read leaves no rows untyped
    if pa.types.is_integer(kind) and not column.null_count:
        return column.cast(pa.int64()).to_numpy()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _texts(column)
    if as_objects or column.null_count == len(column):
        return _objects(column)
    if pa.types.is_integer(kind):  # integers and NULL: floats and NaN
        return pc.cast(column, pa.float64(), safe=False).to_numpy()
    if kind == pa.float64() or (kind == pa.bool_() and not column.null_count):
        return column.to_numpy()
    if pa.types.is_timestamp(kind):
        try:
            return column.cast(pa.timestamp("ns")).to_numpy()
        except pa.ArrowInvalid:  # past nanoseconds' years: datetimes, as the rows give
            pass
    return inferred(_objects(column))


def _objects(column: pa.ChunkedArray) -> np.ndarray:
    values = np.empty(len(column), dtype=object)
    values[:] = column.to_pylist()
    return values


def _texts(column: pa.ChunkedArray) -> np.ndarray:
    """Text as Python strings, None for NULL. When values repeat (names, flags) equal text is
    one object: a million rows keep few copies."""
    sample = column.slice(0, _SHARED_SAMPLE)
    shared = pc.count_distinct(sample).as_py() <= SHARED_MAX_SHARE * len(sample)
    return column.to_pandas(deduplicate_objects=shared).to_numpy()
