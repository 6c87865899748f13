"""Read CRM contacts with their tags into a pandas DataFrame with standard column names."""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from newsletter_pipelines.crm.errors import CrmError
from newsletter_pipelines.crm.schema import CONTACT_FIELDS
from newsletter_pipelines.settings import CrmSchema

# the frame's column names: the default schema's field names, with the id as `contact_id`
CONTACT_COLUMNS = ("contact_id", *CONTACT_FIELDS[1:])


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
    tags = sa.table(schema.tags_table, sa.column(schema.tag_contact_id), sa.column(schema.tag))
    tag_cid, tag = tags.c[schema.tag_contact_id], tags.c[schema.tag]
    contact_query = sa.select(*contacts.c).order_by(contacts.c[schema.id])
    tag_query = sa.select(tag_cid, tag).where(tag.is_not(None)).order_by(tag_cid, tag)
    try:
        rows = _fetch_all(engine, contact_query)
        tag_rows = _fetch_all(engine, tag_query)
    except sa.exc.SQLAlchemyError as exc:
        raise _read_error(schema, exc) from exc
    except engine.dialect.loaded_dbapi.Error as exc:
        raise _read_error(schema, exc) from exc
    frame = pd.DataFrame.from_records(rows, columns=list(CONTACT_COLUMNS))
    del rows
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
