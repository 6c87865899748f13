"""The change sensor's cheap queries: which contacts changed, by (`updated_at`, id)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
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
    stamps = _stamps(schema, engine.dialect.name, None, lambda v: v)
    query = sa.select(stamps.c.at, stamps.c.cid).order_by(stamps.c.at.desc(), stamps.c.cid.desc())
    rows = _run(engine, schema, lambda _: query.limit(1))
    return _mark(*rows[0]) if rows else None


def _marks(
    engine: sa.Engine,
    schema: CrmSchema,
    after: Mark | None,
    upto: Mark | None,
    limit: int | None,
) -> list[Mark]:
    dialect = engine.dialect.name

    def query(conn: sa.Connection) -> sa.Select:
        bind = id_binder(conn, schema)
        stamps = _stamps(schema, dialect, after, bind)
        at, cid = sa.func.max(stamps.c.at), stamps.c.cid
        found = sa.select(at, cid).group_by(cid).order_by(at, cid)
        if upto is not None:
            found = found.having(~_beyond(at, cid, upto, bind, dialect))
        return found if limit is None else found.limit(limit)

    return [_mark(stamp, cid) for stamp, cid in _run(engine, schema, query)]


def _stamps(
    schema: CrmSchema, dialect: str, after: Mark | None, bind: Callable[[Any], Any]
) -> sa.Subquery:
    """(`at`, `cid`): the contacts' times after `after`, and with
    NEWSLETTER_CRM_SCHEMA__TAG_UPDATED_AT their tag rows' times after it; a contact's latest
    time is its change's (any of them after `after`: the latest is too)."""
    sources = [(schema.contacts_table, schema.id, schema.updated_at)]
    if schema.tag_updated_at is not None:
        sources.append((schema.tags_table, schema.tag_contact_id, schema.tag_updated_at))
    parts = []
    for table, id_column, time_column in sources:
        source = sa.table(table, sa.column(id_column), sa.column(time_column, sa.DateTime))
        when, contact_id = source.c[time_column], source.c[id_column]
        order = _comparable(when, dialect)
        part = sa.select(order.label("at"), contact_id.label("cid")).where(when.is_not(None))
        if after is not None:
            plausible = _plausibly_after(when, after, dialect)
            if plausible is not None:
                part = part.where(plausible)
            part = part.where(_beyond(order, contact_id, after, bind, dialect))
        parts.append(part)
    return (parts[0] if len(parts) == 1 else sa.union_all(*parts)).subquery("stamps")


def _comparable(updated: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[Any]:
    """`updated_at` as it orders and compares: SQLite keeps times as text in whatever form it
    was given (with or without a fraction), so there it is normalised to milliseconds."""
    if dialect == "sqlite":
        return sa.func.strftime(_SQLITE_TIME, updated)
    return updated


def _plausibly_after(
    updated: sa.ColumnElement[Any], mark: Mark, dialect: str
) -> sa.ColumnElement[bool] | None:
    """SQLite: a cheap test every row at or after `mark` passes, so that `_comparable` is
    computed for those rows only (a million contacts: the whole table's `strftime` took 0.9 s
    in every diff and sensor tick). A time SQLite reads from text starts with its date in its
    own zone, at most 14:59 from UTC: at or after the mark, that date is at most a day before
    the mark's (two are let through); anything else (numbers, text not starting with a digit)
    is let through too. None elsewhere, or for a mark before 1900 (its date would not compare
    as text)."""
    if dialect != "sqlite" or mark.updated_at.year < 1900:
        return None
    lowest = (mark.updated_at - timedelta(days=2)).strftime("%Y-%m-%d")
    return sa.or_(
        sa.func.typeof(updated) != "text",
        sa.type_coerce(updated, sa.Text) >= lowest,
        ~sa.func.substr(updated, 1, 1).between("0", "9"),
    )


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
