"""Read CRM contacts with their tags into a pandas DataFrame with standard column names."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import pandas as pd
import sqlalchemy as sa
from more_itertools import chunked
from pandas._libs import lib
from pandas._typing import ArrayLike

from newsletter_pipelines.bulk import gc_paused, release_freed_memory
from newsletter_pipelines.crm.addresses import irregular, printable_ascii, sql_address_key
from newsletter_pipelines.crm.arrow_reader import SHARED_MAX_SHARE, inferred, read_columns
from newsletter_pipelines.crm.errors import CrmError
from newsletter_pipelines.crm.schema import CONTACT_FIELDS, id_binder
from newsletter_pipelines.settings import CrmSchema
from newsletter_pipelines.sync.email_address import raw_match_key

# the frame's column names: the default schema's field names, with the id as `contact_id`
CONTACT_COLUMNS = ("contact_id", *CONTACT_FIELDS[1:])
_BATCH_ROWS = 50_000
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
    classified there instead of failing the read. Read column-wise through Arrow where
    `crm.arrow_reader` can (SQLite files, PostgreSQL), else row-wise from the DBAPI cursor: the
    same frame either way.
    """
    contacts = sa.table(schema.contacts_table, *(sa.column(c) for c in _mapped_names(schema)))
    contact_query = sa.select(*contacts.c).order_by(contacts.c[schema.id])
    tag_query = _tag_query(schema)
    as_objects = [[False] * len(CONTACT_COLUMNS), [True, True]]  # tags: as `_with_tags` takes
    try:
        with gc_paused():
            read = read_columns(engine, (contact_query, tag_query), as_objects)
            if read is None:
                columns, (tag_ids, tag_values) = _read_rows(engine, contact_query, tag_query)
            else:
                columns, (tag_ids, tag_values) = read
    except sa.exc.SQLAlchemyError as exc:
        raise _read_error(schema, exc) from exc
    except engine.dialect.loaded_dbapi.Error as exc:
        raise _read_error(schema, exc) from exc
    # not copied into one block: a copy of a million-row object block costs a second
    frame = pd.DataFrame(dict(zip(CONTACT_COLUMNS, columns, strict=True)), copy=False)
    del columns
    frame = _with_tags(frame, tag_ids, tag_values)
    release_freed_memory()  # the drivers' buffers and the temporaries: not kept for eligibility
    return frame


def _read_rows(
    engine: sa.Engine, contact_query: sa.Select, tag_query: sa.Select
) -> tuple[list[ArrayLike], list[np.ndarray]]:
    """The contact columns typed as `DataFrame.from_records` types them (no rows: all object)
    and the tag rows' two columns, from the DBAPI cursor."""
    rows = _fetch_rows(engine, contact_query, len(CONTACT_COLUMNS), share=True)
    tag_rows = _fetch_rows(engine, tag_query, 2, share=False)  # tuples are shared
    typed = inferred if len(rows) else lambda column: column
    columns = [typed(rows[:, i]) for i in range(rows.shape[1])]
    return columns, [tag_rows[:, 0], tag_rows[:, 1]]


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
    tag_ids = np.fromiter((row[0] for row in tag_rows), dtype=object, count=len(tag_rows))
    tag_values = np.fromiter((row[1] for row in tag_rows), dtype=object, count=len(tag_rows))
    return _with_tags(frame, tag_ids, tag_values)


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


def _with_tags(frame: pd.DataFrame, tag_ids: np.ndarray, tag_values: np.ndarray) -> pd.DataFrame:
    """`frame` with a `tags` column: each contact's tags (text, in the rows' order) from the
    (contact id, tag) rows as two columns. Contacts with the same tags share one tuple."""
    if len(tag_values) and pd.api.types.infer_dtype(tag_values, skipna=False) != "string":
        tag_values = np.fromiter(map(str, tag_values), dtype=object, count=len(tag_values))
    kind = pd.api.types.infer_dtype(tag_ids, skipna=False)
    if not len(frame) or kind != pd.api.types.infer_dtype(frame["contact_id"], skipna=False):
        kind = "other"
    if kind not in {"integer", "string"}:  # ids of mixed or other types: matched as Python does
        tags_by_id: dict[object, list[str]] = {}
        for cid, value in zip(tag_ids.tolist(), tag_values.tolist(), strict=True):
            tags_by_id.setdefault(cid, []).append(value)
        frame["tags"] = [tuple(tags_by_id.get(cid, ())) for cid in frame["contact_id"]]
        return frame
    codes, owners = pd.factorize(tag_ids)
    order = np.argsort(codes, kind="stable")  # each contact's tags together, in row order
    ends = np.cumsum(np.bincount(codes, minlength=len(owners))).tolist()
    values = tag_values[order].tolist()
    shared: dict[tuple[str, ...], tuple[str, ...]] = {}
    spans = zip([0, *ends], [*ends, 0], strict=True)  # the last: contacts without tags
    tuples = (tuple(values[start:end]) for start, end in spans)
    by_owner = np.fromiter((shared.setdefault(t, t) for t in tuples), dtype=object)
    frame["tags"] = by_owner[pd.Index(owners).get_indexer(frame["contact_id"])]
    return frame


def _fetch_rows(engine: sa.Engine, query: sa.Select, width: int, *, share: bool) -> np.ndarray:
    """The rows of `query` as a 2-D object array, straight from the DBAPI cursor (no per-row
    SQLAlchemy processing), a batch at a time. With `share`, equal text in a column whose values
    repeat is one string object (names, flags, salutations): a million rows keep few copies."""
    sql = str(query.compile(dialect=engine.dialect))
    blocks = [np.empty((0, width), dtype=object)]
    seen: list[dict[str, str] | None] = [{} if share else None for _ in range(width)]
    rows = 0
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute(sql)
        while batch := cursor.fetchmany(_BATCH_ROWS):
            block = lib.to_object_array_tuples(batch)
            del batch
            rows += len(block)
            for i, known in enumerate(seen):
                if known is None:
                    continue
                before = len(known)
                # only equal text is surely the same value (not 1, 1.0 and True)
                block[:, i] = [known.setdefault(v, v) if type(v) is str else v for v in block[:, i]]
                if len(known) == before == 0 or len(known) > SHARED_MAX_SHARE * rows:
                    seen[i] = None  # no text (ids, numbers), or nearly every value differs
            blocks.append(block)
    finally:
        connection.close()
    return np.concatenate(blocks)


def _read_error(schema: CrmSchema, exc: Exception) -> CrmError:
    cause = getattr(exc, "orig", None) or exc
    return CrmError(
        f"cannot read the CRM tables {schema.contacts_table!r}/{schema.tags_table!r}: "
        f"{type(cause).__name__}: {cause}"
    )
