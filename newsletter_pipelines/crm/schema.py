"""The CRM tables, named through `CrmSchema` so a team can map its own table and column names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from newsletter_pipelines.settings import CrmSchema

# field names of a contact row in the default schema (the demo CSV header, the loader's rows)
CONTACT_FIELDS = (
    "id",
    "salutation",
    "first_name",
    "last_name",
    "email",
    "newsletter",
    "is_private",
    "updated_at",
    "created_at",
)


@dataclass(frozen=True)
class CrmTables:
    """SQLAlchemy tables of one CRM schema mapping."""

    metadata: sa.MetaData
    contacts: sa.Table
    tags: sa.Table
    activities: sa.Table


def crm_tables(schema: CrmSchema) -> CrmTables:
    """Build the contacts, contact-tags and activities tables under the mapped names.

    Types are the default schema's. The activities table is written by the import-back only
    (one row per change it applied; `source_key` makes each write idempotent); reading contacts
    never touches it.
    """
    metadata = sa.MetaData()
    contacts = sa.Table(
        schema.contacts_table,
        metadata,
        sa.Column(schema.id, sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column(schema.salutation, sa.Text),
        sa.Column(schema.first_name, sa.Text),
        sa.Column(schema.last_name, sa.Text),
        sa.Column(schema.email, sa.Text),
        sa.Column(schema.newsletter, sa.Text),
        sa.Column(schema.is_private, sa.Boolean),
        sa.Column(schema.updated_at, sa.DateTime),
        sa.Column(schema.created_at, sa.DateTime),
    )
    tag_time = [sa.Column(schema.tag_updated_at, sa.DateTime)] if schema.tag_updated_at else []
    tags = sa.Table(
        schema.tags_table,
        metadata,
        sa.Column(schema.tag_contact_id, sa.BigInteger, primary_key=True),
        sa.Column(schema.tag, sa.Text, primary_key=True),
        *tag_time,
    )
    activities = sa.Table(
        schema.activities_table,
        metadata,
        sa.Column(schema.activities_id, sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(schema.activities_contact_id, sa.BigInteger, nullable=False),
        sa.Column(schema.activities_kind, sa.Text, nullable=False),
        sa.Column(schema.activities_provider, sa.Text),
        sa.Column(schema.activities_audience, sa.Text),
        sa.Column(schema.activities_occurred_at, sa.DateTime),
        sa.Column(schema.activities_details, sa.Text),  # JSON text
        sa.Column(schema.activities_source_key, sa.Text, nullable=False, unique=True),
    )
    return CrmTables(metadata=metadata, contacts=contacts, tags=tags, activities=activities)


def create_schema(engine: sa.Engine, schema: CrmSchema) -> None:
    """Create the CRM tables if they do not exist yet."""
    crm_tables(schema).metadata.create_all(engine)


def id_binder(conn: sa.Connection, schema: CrmSchema) -> Callable[[Any], Any]:
    """`int` or `str` when the CRM's id column holds integers or text, so ids given either way
    match (PostgreSQL refuses `bigint = varchar`); else ids are bound as given."""
    for column in sa.inspect(conn).get_columns(schema.contacts_table):
        if column["name"] == schema.id:
            try:
                python_type = column["type"].python_type
            except NotImplementedError:
                break
            return {int: int, str: str}.get(python_type, _as_given)
    return _as_given


def _as_given(value: Any) -> Any:
    return value
