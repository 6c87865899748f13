"""Read CRM contacts with their tags into a pandas DataFrame with standard column names."""

from __future__ import annotations

from itertools import groupby
from operator import itemgetter

import pandas as pd
import sqlalchemy as sa

from newsletter_pipelines.crm.errors import CrmError
from newsletter_pipelines.settings import CrmSchema

CONTACT_COLUMNS = (
    "contact_id",
    "salutation",
    "first_name",
    "last_name",
    "email",
    "newsletter",
    "is_private",
    "updated_at",
    "created_at",
)


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
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(*contacts.c).order_by(contacts.c[schema.id])).all()
            tag_rows = conn.execute(
                sa.select(tag_cid, tag).where(tag.is_not(None)).order_by(tag_cid, tag)
            ).all()
    except sa.exc.SQLAlchemyError as exc:
        raise CrmError(
            f"cannot read the CRM tables {schema.contacts_table!r}/{schema.tags_table!r}: "
            f"{type(exc).__name__}: {exc.orig if hasattr(exc, 'orig') else exc}"
        ) from exc
    frame = pd.DataFrame.from_records(rows, columns=list(CONTACT_COLUMNS))
    tags_by_id = {
        cid: tuple(str(t) for _, t in group) for cid, group in groupby(tag_rows, key=itemgetter(0))
    }
    frame["tags"] = [tags_by_id.get(cid, ()) for cid in frame["contact_id"]]
    return frame
