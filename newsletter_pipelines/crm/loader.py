"""Load CRM rows (the demo data or generated rows) into any SQLAlchemy database."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from newsletter_pipelines.crm.errors import CrmError
from newsletter_pipelines.crm.schema import create_schema, crm_tables
from newsletter_pipelines.db import create_engine
from newsletter_pipelines.settings import CrmSchema

log = logging.getLogger(__name__)

NULL_MARKER = r"\N"
CONTACTS_CSV = "contacts.csv"
TAGS_CSV = "contact_tags.csv"
_TEXT_FIELDS = ("salutation", "first_name", "last_name", "email", "newsletter")
_BATCH = 20_000


def _timestamp(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _flag(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"true", "1", "t", "yes"}


class _TextCleaner:
    """PostgreSQL text cannot hold NUL: replace it with U+FFFD there and count the replacements."""

    def __init__(self, dialect: str) -> None:
        self.enabled = dialect == "postgresql"
        self.replaced = 0

    def __call__(self, value: Any) -> Any:
        if self.enabled and isinstance(value, str) and "\x00" in value:
            self.replaced += 1
            return value.replace("\x00", "\ufffd")
        return value


def _batches(rows: Iterable[Mapping[str, Any]], size: int) -> Iterator[list[Mapping[str, Any]]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, size)):
        yield batch


def insert_rows(
    engine: sa.Engine,
    schema: CrmSchema,
    contacts: Iterable[Mapping[str, Any]],
    tags: Iterable[Mapping[str, Any]],
) -> tuple[int, int]:
    """Insert contact rows and tag rows (default field names) in batches; return both counts."""
    tables = crm_tables(schema)
    clean = _TextCleaner(engine.dialect.name)
    n_contacts = n_tags = 0
    with engine.begin() as conn:
        for batch in _batches(contacts, _BATCH):
            values = [
                {
                    schema.id: int(row["id"]),
                    **{getattr(schema, f): clean(row.get(f)) for f in _TEXT_FIELDS},
                    schema.is_private: _flag(row.get("is_private")),
                    schema.updated_at: _timestamp(row.get("updated_at")),
                    schema.created_at: _timestamp(row.get("created_at")),
                }
                for row in batch
            ]
            conn.execute(tables.contacts.insert(), values)
            n_contacts += len(values)
        for batch in _batches(tags, _BATCH):
            values = [
                {schema.tag_contact_id: int(row["contact_id"]), schema.tag: clean(row["tag"])}
                for row in batch
            ]
            conn.execute(tables.tags.insert(), values)
            n_tags += len(values)
    if clean.replaced:
        log.warning(
            "replaced NUL characters in %d text values (PostgreSQL cannot store NUL)",
            clean.replaced,
        )
    return n_contacts, n_tags


def read_csv_rows(path: Path) -> Iterator[dict[str, str | None]]:
    """Rows of a demo CSV file, with the `\\N` marker turned into None."""
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            yield {key: (None if value == NULL_MARKER else value) for key, value in row.items()}


def load_demo(
    url: str, data_dir: Path, schema: CrmSchema | None = None, replace: bool = False
) -> tuple[int, int]:
    """Create the CRM schema at `url` and load the demo CSVs from `data_dir` into it."""
    schema = schema or CrmSchema()
    for name in (CONTACTS_CSV, TAGS_CSV):
        if not (data_dir / name).is_file():
            raise CrmError(f"demo data file {data_dir / name} is missing")
    engine = create_engine(url)
    try:
        create_schema(engine, schema)
        tables = crm_tables(schema)
        with engine.begin() as conn:
            existing = conn.execute(sa.select(sa.func.count()).select_from(tables.contacts))
            count = existing.scalar_one()
            if count and not replace:
                raise CrmError(
                    f"table {schema.contacts_table!r} already holds {count} contacts; "
                    "pass --replace to overwrite them with the demo data"
                )
            conn.execute(tables.activities.delete())
            conn.execute(tables.tags.delete())
            conn.execute(tables.contacts.delete())
        return insert_rows(
            engine,
            schema,
            read_csv_rows(data_dir / CONTACTS_CSV),
            read_csv_rows(data_dir / TAGS_CSV),
        )
    finally:
        engine.dispose()
