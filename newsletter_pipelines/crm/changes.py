"""The change sensor's cheap queries: which contacts changed, by (`updated_at`, id)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from newsletter_pipelines.crm.errors import CrmError
from newsletter_pipelines.crm.schema import id_binder
from newsletter_pipelines.settings import CrmSchema
from newsletter_pipelines.sync.changes import Mark
from newsletter_pipelines.values import as_datetime

_SQLITE_TIME = "%Y-%m-%d %H:%M:%f"


def changed_after(
    engine: sa.Engine, schema: CrmSchema, after: Mark | None, limit: int | None = None
) -> list[Mark]:
    """Marks of the contacts changed after `after` (all with a time when None), oldest first;
    a mark with an empty id means "at or after its time"."""
    return _marks(engine, schema, after, None, limit)


def changed_between(
    engine: sa.Engine, schema: CrmSchema, after: Mark | None, upto: Mark, limit: int | None = None
) -> list[Mark]:
    """Marks of the contacts changed after `after` and at or before `upto`, oldest first."""
    return _marks(engine, schema, after, upto, limit)


def latest_change(engine: sa.Engine, schema: CrmSchema) -> Mark | None:
    """The mark of the contact changed last (None: no contact has a time)."""
    updated, contact_id = _columns(schema)
    order = _comparable(updated, engine.dialect.name)
    query = (
        sa.select(updated, contact_id)
        .where(updated.is_not(None))
        .order_by(order.desc(), contact_id.desc())
        .limit(1)
    )
    rows = _run(engine, schema, lambda _: query)
    return _mark(*rows[0]) if rows else None


def _marks(
    engine: sa.Engine,
    schema: CrmSchema,
    after: Mark | None,
    upto: Mark | None,
    limit: int | None,
) -> list[Mark]:
    updated, contact_id = _columns(schema)
    dialect = engine.dialect.name
    order = _comparable(updated, dialect)

    def query(conn: sa.Connection) -> sa.Select:
        bind = id_binder(conn, schema)
        found = sa.select(updated, contact_id).where(updated.is_not(None))
        if after is not None:
            found = found.where(_beyond(order, contact_id, after, bind, dialect))
        if upto is not None:
            found = found.where(~_beyond(order, contact_id, upto, bind, dialect))
        found = found.order_by(order, contact_id)
        return found if limit is None else found.limit(limit)

    return [_mark(stamp, cid) for stamp, cid in _run(engine, schema, query)]


def _comparable(updated: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[Any]:
    """`updated_at` as it orders and compares: SQLite keeps times as text in whatever form it
    was given (with or without a fraction), so there it is normalised to milliseconds."""
    if dialect == "sqlite":
        return sa.func.strftime(_SQLITE_TIME, updated)
    return updated


def _value(when: datetime, dialect: str) -> Any:
    """A mark's time as `_comparable` makes the column's (SQLite rounds to milliseconds)."""
    if dialect == "sqlite":
        return sa.func.strftime(_SQLITE_TIME, when.strftime("%Y-%m-%d %H:%M:%S.%f"))
    return when


def _beyond(
    order: sa.ColumnElement[Any],
    contact_id: sa.ColumnElement[Any],
    mark: Mark,
    bind: Callable[[Any], Any],
    dialect: str,
) -> sa.ColumnElement[bool]:
    """Rows after `mark` in (`updated_at`, id) order; an empty id: at or after its time."""
    when = _value(mark.updated_at, dialect)
    if not mark.contact_id:
        return order >= when
    return sa.or_(order > when, sa.and_(order == when, contact_id > bind(mark.contact_id)))


def _columns(schema: CrmSchema) -> tuple[sa.ColumnClause[Any], sa.ColumnClause[Any]]:
    contacts = sa.table(
        schema.contacts_table, sa.column(schema.id), sa.column(schema.updated_at, sa.DateTime)
    )
    return contacts.c[schema.updated_at], contacts.c[schema.id]


def _run(
    engine: sa.Engine, schema: CrmSchema, query: Callable[[sa.Connection], sa.Select]
) -> list[tuple[Any, Any]]:
    try:
        with engine.connect() as conn:
            return [(row[0], row[1]) for row in conn.execute(query(conn))]
    except sa.exc.SQLAlchemyError as exc:
        raise CrmError(
            f"cannot read the changes of {schema.contacts_table!r}: {type(exc).__name__}: {exc}"
        ) from exc


def _mark(stamp: Any, contact_id: Any) -> Mark:
    when = as_datetime(stamp)
    if not isinstance(when, datetime):
        raise CrmError(f"contact {contact_id}: updated_at {stamp!r} is not a time")
    return Mark(when.replace(tzinfo=None), str(contact_id))
