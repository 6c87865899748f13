"""Read CRM contacts with their tags into a pandas DataFrame with standard column names."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

import pandas as pd
import sqlalchemy as sa
from more_itertools import chunked

from newsletter_pipelines.bulk import gc_paused
from newsletter_pipelines.crm.addresses import irregular, printable_ascii, sql_address_key
from newsletter_pipelines.crm.errors import CrmError
from newsletter_pipelines.crm.schema import CONTACT_FIELDS, id_binder
from newsletter_pipelines.settings import CrmSchema
from newsletter_pipelines.sync.email_address import raw_match_key

# the frame's column names: the default schema's field names, with the id as `contact_id`
CONTACT_COLUMNS = ("contact_id", *CONTACT_FIELDS[1:])
LOOKUP_MAX = 5_000  # addresses or ids `read_contacts_at` looks up in SQL; past that it reads all


def _mapped_names(schema: CrmSchema) -> list[str]:
    return [
        schema.id,
        schema.salutation,
        schema.first_name,
        schema.last_name,
        schema.email,
        schema.newsletter,
        schema.is_private,
        schema.updated_at,
        schema.created_at,
    ]


def read_contacts(engine: sa.Engine, schema: CrmSchema) -> pd.DataFrame:
    """All CRM contacts with raw values as stored, plus a `tags` column of sorted tuples.

    Columns are read untyped, so wrong types in the CRM reach eligibility as they are and are
    classified there instead of failing the read.
    """
    contacts = sa.table(schema.contacts_table, *(sa.column(c) for c in _mapped_names(schema)))
    contact_query = sa.select(*contacts.c).order_by(contacts.c[schema.id])
    tag_query = _tag_query(schema)
    try:
        rows = _fetch_all(engine, contact_query)
        tag_rows = _fetch_all(engine, tag_query)
    except sa.exc.SQLAlchemyError as exc:
        raise _read_error(schema, exc) from exc
    except engine.dialect.loaded_dbapi.Error as exc:
        raise _read_error(schema, exc) from exc
    frame = pd.DataFrame.from_records(rows, columns=list(CONTACT_COLUMNS))
    del rows
    return _with_tags(frame, tag_rows)


def read_contacts_at(
    engine: sa.Engine, schema: CrmSchema, keys: Collection[str], ids: Collection[str]
) -> pd.DataFrame:
    """The contacts (as `read_contacts`) whose address has one of these match keys or whose id
    is one of these (as text): for a run about a few addresses (`sync.scope`).

    Printable-ASCII addresses are compared in SQL; addresses with any other character are read
    and keyed here, as eligibility keys them. Past `LOOKUP_MAX` addresses or ids every contact
    is read and matched here: one pass costs less than many IN scans of an unindexed column,
    and stays within the drivers' parameter limits."""
    contacts = sa.table(schema.contacts_table, *(sa.column(c) for c in _mapped_names(schema)))
    email, contact_id = contacts.c[schema.email], contacts.c[schema.id]
    dialect = engine.dialect.name
    plain = sorted(k for k in keys if printable_ascii(k))
    wanted_ids = _typed_ids(engine, schema, ids)
    query = sa.select(*contacts.c).order_by(contact_id)
    everyone = max(len(plain), len(wanted_ids)) > LOOKUP_MAX
    if not everyone:
        conditions = [irregular(email, dialect)]
        conditions += [sql_address_key(email, dialect).in_(part) for part in chunked(plain, 500)]
        conditions += [contact_id.in_(part) for part in chunked(wanted_ids, 500)]
        query = query.where(sa.or_(*conditions))
    key_set, id_set = set(keys), {str(i) for i in ids}
    try:
        with gc_paused(), engine.connect() as conn:
            # untyped columns: the driver's rows as they are (no per-row processing)
            rows = conn.execute(query).cursor.fetchall()
            found = [r for r in rows if str(r[0]) in id_set or raw_match_key(r[4]) in key_set]
            del rows
            if everyone:  # every tag row in one pass, as every contact was read
                tag_rows = conn.execute(_tag_query(schema)).cursor.fetchall()
            else:
                tag_rows = [
                    row
                    for batch in chunked([r[0] for r in found], 500)
                    for row in conn.execute(_tag_query(schema, batch)).cursor.fetchall()
                ]
    except sa.exc.SQLAlchemyError as exc:
        raise _read_error(schema, exc) from exc
    except engine.dialect.loaded_dbapi.Error as exc:
        raise _read_error(schema, exc) from exc
    frame = pd.DataFrame.from_records(found, columns=list(CONTACT_COLUMNS))
    return _with_tags(frame, tag_rows)


def _typed_ids(engine: sa.Engine, schema: CrmSchema, ids: Collection[str]) -> list[object]:
    """`ids` as the id column compares them (ids that are not integers cannot be in an integer
    column)."""
    with engine.connect() as conn:
        bind = id_binder(conn, schema)
    if bind is int:
        return sorted(int(i) for i in ids if str(i).lstrip("-").isdigit())
    return sorted(bind(i) for i in ids)


def _tag_query(schema: CrmSchema, ids: Sequence[object] | None = None) -> sa.Select:
    """The (contact id, tag) rows of the tags table, of the contacts `ids` when given."""
    tags = sa.table(schema.tags_table, sa.column(schema.tag_contact_id), sa.column(schema.tag))
    tag_cid, tag = tags.c[schema.tag_contact_id], tags.c[schema.tag]
    query = sa.select(tag_cid, tag).where(tag.is_not(None))
    if ids is not None:
        query = query.where(tag_cid.in_(ids))
    return query.order_by(tag_cid, tag)


def _with_tags(frame: pd.DataFrame, tag_rows: Iterable[Sequence[Any]]) -> pd.DataFrame:
    """`frame` with a `tags` column: each contact's tags from (contact id, tag) rows."""
    tags_by_id: dict[object, list[str]] = {}
    for cid, value in tag_rows:
        tags_by_id.setdefault(cid, []).append(str(value))
    frame["tags"] = [tuple(tags_by_id.get(cid, ())) for cid in frame["contact_id"]]
    return frame


def _fetch_all(engine: sa.Engine, query: sa.Select) -> list[tuple]:
    """Rows of `query` straight from the DBAPI cursor (no per-row SQLAlchemy processing)."""
    sql = str(query.compile(dialect=engine.dialect))
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute(sql)
        return cursor.fetchall()
    finally:
        connection.close()


def _read_error(schema: CrmSchema, exc: Exception) -> CrmError:
    cause = getattr(exc, "orig", None) or exc
    return CrmError(
        f"cannot read the CRM tables {schema.contacts_table!r}/{schema.tags_table!r}: "
        f"{type(cause).__name__}: {cause}"
    )
