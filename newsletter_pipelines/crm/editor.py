"""Edit one CRM contact as a CRM user would: the changed columns and tags, `updated_at` bumped
(the change sensor sees the contact by it; a tag change bumps it too)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from newsletter_pipelines.crm.errors import CrmError
from newsletter_pipelines.crm.schema import crm_tables, id_binder
from newsletter_pipelines.settings import CrmSchema

EDITABLE = ("salutation", "first_name", "last_name", "email", "newsletter", "is_private")


def edit_contact(
    engine: sa.Engine,
    schema: CrmSchema,
    contact_id: str,
    fields: Mapping[str, Any],
    *,
    tags: frozenset[str] | None = None,
    now: datetime | None = None,
) -> None:
    """Set `fields` (names of `EDITABLE`) and, when given, exactly `tags` on the contact, and
    its `updated_at` to `now` (default: the current UTC time), in one transaction."""
    unknown = set(fields) - set(EDITABLE)
    if unknown:
        raise ValueError(f"not editable: {sorted(unknown)} (editable: {', '.join(EDITABLE)})")
    tables = crm_tables(schema)
    contacts, tag_table = tables.contacts, tables.tags
    stamp = (now or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    values = {getattr(schema, name): value for name, value in fields.items()}
    try:
        with engine.begin() as conn:
            cid = id_binder(conn, schema)(contact_id)
            found = conn.execute(
                contacts.update()
                .where(contacts.c[schema.id] == cid)
                .values({**values, schema.updated_at: stamp})
            )
            if found.rowcount != 1:
                raise CrmError(f"no CRM contact with id {contact_id}")
            if tags is not None:
                owner = tag_table.c[schema.tag_contact_id]
                conn.execute(tag_table.delete().where(owner == cid))
                timed = {schema.tag_updated_at: stamp} if schema.tag_updated_at else {}
                rows = [
                    {schema.tag_contact_id: cid, schema.tag: tag, **timed} for tag in sorted(tags)
                ]
                if rows:
                    conn.execute(tag_table.insert(), rows)
    except sa.exc.SQLAlchemyError as exc:
        raise CrmError(f"cannot edit CRM contact {contact_id}: {exc}") from exc
