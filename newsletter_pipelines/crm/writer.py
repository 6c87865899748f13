"""Write provider-side changes back into the CRM (the import-back), through the `CrmSchema` mapping.

The writer changes only the newsletter column, the tags table, the activities table and inserts
new contacts. Every item carries an `Activity` whose `source_key` is unique in the activities
table: an item whose key is already there was applied before and is skipped entirely, so applying
the same list twice writes once. Items are written in chunks, one transaction each; the summary
says what happened to each item (`ItemResult`).

Timestamps are stored naive in UTC (the CRM's `DateTime` columns carry no zone; eligibility reads
naive values as UTC).
"""

from __future__ import annotations

import json
import numbers
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from more_itertools import chunked

from newsletter_pipelines.bulk import gc_paused
from newsletter_pipelines.crm.addresses import (
    address_key,
    irregular,
    printable_ascii,
    sql_address_key,
)
from newsletter_pipelines.crm.errors import CrmError
from newsletter_pipelines.crm.schema import crm_tables, id_binder
from newsletter_pipelines.db import IN_BATCH, bulk_insert, matching
from newsletter_pipelines.settings import CrmSchema, CrmValues

NEWSLETTER_VALUES = ("yes", "no", "unspecified")  # logical values, mapped by CrmValues
_ID_TYPES: dict[Any, sa.types.TypeEngine[Any]] = {int: sa.BigInteger(), str: sa.Text()}
_FETCH = 10_000  # rows fetched at a time when addresses are read
# json.dumps with options builds an encoder per call: one, reused, for every activity's details
_details_json = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str).encode
CHUNK_SIZE = 5000  # items per transaction: 1,000 spent a fifth of the write on commits


def _utc_naive(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def _no_nul(text: str) -> str:
    """PostgreSQL text cannot hold NUL: it becomes U+FFFD (as the loader does)."""
    return text.replace("\x00", "\ufffd")


def _tags(tags: Iterable[str]) -> frozenset[str]:
    return frozenset(map(_no_nul, tags))


@dataclass(frozen=True)
class Activity:
    """One row of the activities table; `source_key` makes the write it records idempotent."""

    kind: str
    provider: str
    audience: str
    occurred_at: datetime | None
    details: Mapping[str, Any]
    source_key: str

    def __post_init__(self) -> None:
        if not self.source_key:
            raise ValueError("an activity needs a non-empty source_key")


@dataclass(frozen=True)
class ContactChange:
    """Changes to one existing contact, applied at most once (by `activity.source_key`).

    `newsletter` is the logical value ('yes', 'no', 'unspecified'; None: unchanged), written as
    mapped by `CrmValues`. A tag may not be both added and removed.
    """

    contact_id: int | str  # as the reader returns it
    activity: Activity
    newsletter: str | None = None
    add_tags: frozenset[str] = frozenset()
    remove_tags: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if isinstance(self.contact_id, numbers.Integral) and not isinstance(self.contact_id, int):
            object.__setattr__(self, "contact_id", int(self.contact_id))  # numpy integers
        object.__setattr__(self, "add_tags", _tags(self.add_tags))
        object.__setattr__(self, "remove_tags", _tags(self.remove_tags))
        if self.newsletter is not None and self.newsletter not in NEWSLETTER_VALUES:
            raise ValueError(f"newsletter must be one of {NEWSLETTER_VALUES}: {self.newsletter!r}")
        if both := self.add_tags & self.remove_tags:
            raise ValueError(f"tags both added and removed: {sorted(both)}")


@dataclass(frozen=True)
class NewContact:
    """A person who signed up at the provider and is unknown to the CRM; created with newsletter
    = yes."""

    email: str
    salutation: str
    first_name: str
    last_name: str
    tags: frozenset[str]
    activity: Activity

    def __post_init__(self) -> None:
        for name in ("email", "salutation", "first_name", "last_name"):
            object.__setattr__(self, name, _no_nul(getattr(self, name)))
        object.__setattr__(self, "tags", _tags(self.tags))


class _StatementError(Exception):
    """A statement failed; `apply` turns it into a CrmError."""

    def __init__(self, verb: str, table: str, exc: Exception) -> None:
        super().__init__(verb, table, exc)
        self.verb, self.table, self.exc = verb, table, exc


class ItemOutcome(StrEnum):
    """What `CrmWriter.apply` did with one item."""

    APPLIED = "applied"  # change written, or contact created
    ALREADY_APPLIED = "already_applied"  # its source key was applied before
    MISSING_CONTACT = "missing_contact"  # a change to a contact the CRM does not hold
    EXISTING_ADDRESS = "existing_address"  # a new contact whose address the CRM holds


@dataclass(frozen=True)
class ItemResult:
    """One item of an apply: its activity's source key, the contact and the outcome.

    `contact_id` (as text): the contact written (a created contact's new id), else the id the
    change gave; None for a new contact not created.
    """

    source_key: str
    contact_id: str | None
    result: ItemOutcome


@dataclass
class WriteSummary:
    """What one `CrmWriter.apply` wrote.

    `applied`: changes applied to existing contacts; `newsletter_set` (per logical value) and
    `tags_added`/`tags_removed` count the net writes to those contacts. `contacts_created`: new
    contacts inserted (newsletter yes, with their tags); `activities`: activity rows inserted,
    one per applied change or created contact. `items`: one result per item, in input order
    (changes, then new contacts); `applied` and `contacts_created` count its applied ones.
    """

    applied: int = 0
    skipped_already_applied: int = 0
    skipped_missing_contact: int = 0
    skipped_existing_address: int = 0
    contacts_created: int = 0
    newsletter_set: Counter[str] = field(default_factory=Counter)
    tags_added: int = 0
    tags_removed: int = 0
    activities: int = 0
    chunks: int = 0
    items: list[ItemResult] = field(default_factory=list)


@dataclass
class _State:
    """One contact's stored newsletter value and tags, and the values after the chunk's changes."""

    db_id: Any
    stored_newsletter: Any
    stored_tags: frozenset[str]
    newsletter: Any
    logical: str | None
    tags: set[str]


@dataclass
class _Run:
    """State of one `apply`: its timestamp, summary, source keys seen, how contact ids are bound,
    the address keys of its new contacts and those of them the CRM holds."""

    now: datetime
    summary: WriteSummary
    seen: set[str]
    bind_id: Callable[[Any], Any]
    new_keys: frozenset[str]
    held: set[str] | None = None  # looked up when the first new contact is to be created


def _same(value: Any) -> Any:
    return value


def _bind(bind_id: Callable[[Any], Any], contact_id: Any) -> Any:
    """The id as the CRM's column holds it; None when it cannot be one (no such contact)."""
    try:
        return bind_id(contact_id)
    except (TypeError, ValueError):
        return None


def _typed(column: sa.ColumnElement[Any], run: _Run) -> sa.ColumnElement[Any]:
    """An id column typed as `run` binds ids (int or str), so PostgreSQL can match them as one
    array (`db.matching`); else as it is (IN lists)."""
    id_type = _ID_TYPES.get(run.bind_id)
    return column if id_type is None else sa.type_coerce(column, id_type)


def _given_id(item: ContactChange | NewContact) -> str | None:
    return str(item.contact_id) if isinstance(item, ContactChange) else None


class CrmWriter:
    """Applies import-back changes to a CRM mapped by `CrmSchema`, in chunked transactions.

    New contacts get ids `max(id) + 1, …` read inside their chunk's transaction: this assumes an
    integer id column the application assigns (the default schema: BigInteger, no autoincrement).
    A concurrent writer inserting contacts at the same time makes the chunk fail on the primary
    key and roll back; re-running is safe.
    """

    def __init__(
        self,
        engine: sa.Engine,
        schema: CrmSchema,
        values: CrmValues,
        chunk_size: int = CHUNK_SIZE,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.engine = engine
        self.schema = schema
        self.values = values
        self.chunk_size = chunk_size
        self.log = log
        s = schema
        # untyped ids: bound as `_id_binder` says, so a mapped CRM's id type is respected
        self.contacts = sa.table(
            s.contacts_table,
            sa.column(s.id),
            sa.column(s.salutation, sa.Text),
            sa.column(s.first_name, sa.Text),
            sa.column(s.last_name, sa.Text),
            sa.column(s.email, sa.Text),
            sa.column(s.newsletter, sa.Text),
            sa.column(s.is_private, sa.Boolean),
            sa.column(s.updated_at, sa.DateTime),
            sa.column(s.created_at, sa.DateTime),
        )
        tag_time = [sa.column(s.tag_updated_at, sa.DateTime)] if s.tag_updated_at else []
        self.tags = sa.table(
            s.tags_table, sa.column(s.tag_contact_id), sa.column(s.tag, sa.Text), *tag_time
        )
        self.activities = crm_tables(s).activities
        self.activity_columns = tuple(c.name for c in self.activities.c)[1:]  # all but the id

    def apply(
        self,
        changes: Sequence[ContactChange],
        new_contacts: Sequence[NewContact],
        now: datetime | None = None,
    ) -> WriteSummary:
        """Write `changes`, then create `new_contacts`; chunks of `chunk_size` items each commit.

        A change to a contact id the CRM does not hold is skipped (`skipped_missing_contact`); a
        new contact whose address (as `address_key`) the CRM already holds, or an earlier new
        contact of this apply has, is skipped (`skipped_existing_address`). Raises `CrmError`
        when the database refuses a statement; chunks committed before stay committed.
        """
        summary = WriteSummary()
        run = _Run(
            now=_utc_naive(now or datetime.now(UTC)),
            summary=summary,
            seen=set(),
            bind_id=self._id_binder() if changes else _same,
            new_keys=frozenset(address_key(new.email) for new in new_contacts),
        )
        items: list[ContactChange | NewContact] = [*changes, *new_contacts]
        n_chunks = -(-len(items) // self.chunk_size)
        with gc_paused():  # rows by the hundred thousand, no cycles among them
            for number, chunk in enumerate(chunked(items, self.chunk_size), start=1):
                self._commit(chunk, run)
                if self.log:
                    self.log(
                        f"CRM write chunk {number}/{n_chunks}: {summary.applied} changes "
                        f"applied, {summary.contacts_created} contacts created so far"
                    )
        return summary

    def _commit(self, chunk: list[ContactChange | NewContact], run: _Run) -> None:
        """Write one chunk in one transaction."""
        try:
            with self.engine.begin() as conn:
                self._chunk(conn, chunk, run)
        except _StatementError as failed:
            raise self._error(failed.verb, failed.table, failed.exc, run.summary) from failed.exc
        except sa.exc.SQLAlchemyError as exc:  # connecting, committing
            raise self._error("write", self.schema.contacts_table, exc, run.summary) from exc
        run.summary.chunks += 1

    # --- one chunk --------------------------------------------------------------------------

    def _chunk(
        self,
        conn: sa.Connection,
        chunk: list[ContactChange | NewContact],
        run: _Run,
    ) -> None:
        s, act, summary = self.schema, self.activities.c, run.summary
        keys = [item.activity.source_key for item in chunk]
        done = set(self._lookup(conn, act[s.activities_source_key], keys, self.activities))
        fresh: list[ContactChange | NewContact] = []
        already: list[ItemResult | None] = []  # per item of the chunk; None: fresh
        for item in chunk:
            key = item.activity.source_key
            if key in done or key in run.seen:
                summary.skipped_already_applied += 1
                already.append(ItemResult(key, _given_id(item), ItemOutcome.ALREADY_APPLIED))
            else:
                run.seen.add(key)
                fresh.append(item)
                already.append(None)
        changed, activities = self._changes(
            conn, [i for i in fresh if isinstance(i, ContactChange)], run
        )
        created, created_activities = self._create(
            conn, [i for i in fresh if isinstance(i, NewContact)], run
        )
        self._insert(conn, self.activities, self.activity_columns, activities + created_activities)
        summary.activities += len(activities) + len(created_activities)
        outcomes = iter(changed + created)  # in chunk order: changes precede new contacts
        summary.items += [result or next(outcomes) for result in already]

    def _changes(
        self,
        conn: sa.Connection,
        changes: list[ContactChange],
        run: _Run,
    ) -> tuple[list[ItemResult], list[tuple[Any, ...]]]:
        """Apply `changes` to their contacts' current state; write the net differences. Returns
        a result per change and the activity rows of those applied."""
        if not changes:
            return [], []
        s, c, t = self.schema, self.contacts.c, self.tags.c
        now, summary = run.now, run.summary
        contact_id, tag_contact_id = _typed(c[s.id], run), _typed(t[s.tag_contact_id], run)
        bound = [_bind(run.bind_id, change.contact_id) for change in changes]
        ids = list({cid for cid in bound if cid is not None})
        states: dict[str, _State] = {}
        query = sa.select(c[s.id], c[s.newsletter])
        for db_id, newsletter in self._rows(conn, query, contact_id, ids, self.contacts):
            states[str(db_id)] = _State(db_id, newsletter, frozenset(), newsletter, None, set())
        db_ids = [state.db_id for state in states.values()]
        tag_query = sa.select(t[s.tag_contact_id], t[s.tag]).where(t[s.tag].is_not(None))
        stored_tags: dict[str, set[str]] = {}
        for cid, tag in self._rows(conn, tag_query, tag_contact_id, db_ids, self.tags):
            stored_tags.setdefault(str(cid), set()).add(tag)
        for key, tags in stored_tags.items():
            states[key].stored_tags, states[key].tags = frozenset(tags), set(tags)
        results: list[ItemResult] = []
        activities: list[tuple[Any, ...]] = []
        for change, cid in zip(changes, bound, strict=True):
            key = change.activity.source_key
            state = None if cid is None else states.get(str(cid))
            if state is None:
                summary.skipped_missing_contact += 1
                results.append(ItemResult(key, _given_id(change), ItemOutcome.MISSING_CONTACT))
                continue
            if change.newsletter is not None:
                state.newsletter = getattr(self.values, change.newsletter)
                state.logical = change.newsletter
            state.tags = (state.tags - change.remove_tags) | change.add_tags
            activities.append(self._activity_row(state.db_id, change.activity))
            results.append(ItemResult(key, str(state.db_id), ItemOutcome.APPLIED))
            summary.applied += 1
        by_value: dict[Any, list[Any]] = {}  # newsletter value to write -> contact ids
        stamp_only: list[Any] = []
        removed: dict[str, list[Any]] = {}  # tag -> contact ids
        added: list[tuple[Any, str]] = []
        for state in states.values():
            added += [(state.db_id, tag) for tag in state.tags - state.stored_tags]
            for tag in state.stored_tags - state.tags:
                removed.setdefault(tag, []).append(state.db_id)
            if state.newsletter != state.stored_newsletter:
                summary.newsletter_set[state.logical or ""] += 1
                by_value.setdefault(state.newsletter, []).append(state.db_id)
            elif state.tags != state.stored_tags:
                stamp_only.append(state.db_id)
        update = sa.update(self.contacts)
        for value, ids in by_value.items():
            values = {s.newsletter: value, s.updated_at: now}
            self._each(conn, update.values(values), contact_id, ids)
        self._each(conn, update.values({s.updated_at: now}), contact_id, stamp_only)
        for tag, ids in removed.items():
            self._each(conn, sa.delete(self.tags).where(t[s.tag] == tag), tag_contact_id, ids)
        self._insert_tags(conn, added, now)
        n_removed = sum(map(len, removed.values()))
        summary.tags_added += len(added)
        summary.tags_removed += n_removed
        return results, activities

    def _create(
        self,
        conn: sa.Connection,
        new_contacts: list[NewContact],
        run: _Run,
    ) -> tuple[list[ItemResult], list[tuple[Any, ...]]]:
        """Insert the contacts whose address the CRM does not hold yet, ids from max(id) + 1.
        Returns a result per new contact and the activity rows of those created."""
        if not new_contacts:
            return [], []
        s, c = self.schema, self.contacts.c
        if run.held is None:
            run.held = self._held(conn, run.new_keys)
        now, summary, held = run.now, run.summary, run.held
        highest = self._scalar(conn, sa.select(sa.func.max(c[s.id])), s.contacts_table)
        try:
            next_id = int(highest or 0) + 1
        except (TypeError, ValueError):
            raise CrmError(
                f"cannot assign ids to new contacts in {s.contacts_table!r}: the largest "
                f"{s.id!r} is not an integer ({highest!r})"
            ) from None
        contacts: list[tuple[Any, ...]] = []
        tags: list[tuple[Any, str]] = []
        activities: list[tuple[Any, ...]] = []
        results: list[ItemResult] = []
        for new in new_contacts:
            key = address_key(new.email)
            if key in held:
                summary.skipped_existing_address += 1
                results.append(
                    ItemResult(new.activity.source_key, None, ItemOutcome.EXISTING_ADDRESS)
                )
                continue
            held.add(key)
            contacts.append(
                (
                    next_id,
                    new.salutation,
                    new.first_name,
                    new.last_name,
                    new.email,
                    self.values.yes,
                    False,
                    now,
                    now,
                )
            )
            tags += [(next_id, tag) for tag in sorted(new.tags)]
            activities.append(self._activity_row(next_id, new.activity))
            results.append(ItemResult(new.activity.source_key, str(next_id), ItemOutcome.APPLIED))
            next_id += 1
        self._insert(conn, self.contacts, tuple(c.name for c in self.contacts.c), contacts)
        self._insert_tags(conn, tags, now)
        summary.contacts_created += len(contacts)
        return results, activities

    def _insert_tags(self, conn: sa.Connection, rows: list[tuple[Any, str]], now: datetime) -> None:
        """Insert (contact id, tag) rows, stamped with `now` where the tags table has a time."""
        s = self.schema
        if s.tag_updated_at is None:
            self._insert(conn, self.tags, (s.tag_contact_id, s.tag), rows)
        else:
            stamped = [(*row, now) for row in rows]
            self._insert(conn, self.tags, (s.tag_contact_id, s.tag, s.tag_updated_at), stamped)

    def _activity_row(self, contact_id: Any, activity: Activity) -> tuple[Any, ...]:
        """An activities row, values in the order of `activity_columns`."""
        return (
            contact_id,
            activity.kind,
            activity.provider,
            activity.audience,
            _utc_naive(activity.occurred_at),
            _details_json(dict(activity.details)),
            activity.source_key,
        )

    # --- statements, each failure named by its table ---------------------------------------

    def _id_binder(self) -> Callable[[Any], Any]:
        """How ids are bound to compare with the CRM's id column (`schema.id_binder`)."""
        try:
            with self.engine.connect() as conn:
                return id_binder(conn, self.schema)
        except sa.exc.SQLAlchemyError as exc:
            raise self._error("read", self.schema.contacts_table, exc, None) from exc

    def _held(self, conn: sa.Connection, keys: frozenset[str]) -> set[str]:
        """Those of `keys` that CRM addresses have (compared as `address_key`), in one query.

        Up to `IN_BATCH` printable-ASCII keys are looked up with `sql_address_key`, exact for
        the printable-ASCII addresses, which alone have such keys; every other address is read
        as well (`irregular`: few) and keyed here. Past that, every address is read: one pass
        costs less than several IN scans of an unindexed column. Rows are streamed and compared
        here, so memory grows with `keys` only.
        """
        s = self.schema
        email = self.contacts.c[s.email]
        plain = sorted(key for key in keys if printable_ascii(key))
        query = sa.select(email).where(email.is_not(None))
        if len(plain) <= IN_BATCH:
            dialect = conn.dialect.name
            query = query.where(
                sa.or_(sql_address_key(email, dialect).in_(plain), irregular(email, dialect))
            )
        try:
            rows = conn.execute(query.execution_options(yield_per=_FETCH)).scalars()
            return {key for e in rows if (key := address_key(str(e))) in keys}
        except sa.exc.SQLAlchemyError as exc:
            raise _StatementError("read", s.contacts_table, exc) from exc

    def _lookup(
        self, conn: sa.Connection, column: sa.ColumnElement[Any], values: list[Any], table: Any
    ) -> Iterable[Any]:
        """Values of `column` among `values` (a primary-key or unique lookup)."""
        return [row[0] for row in self._rows(conn, sa.select(column), column, values, table)]

    def _rows(
        self,
        conn: sa.Connection,
        query: sa.Select[Any],
        column: sa.ColumnElement[Any],
        values: list[Any],
        table: Any,
    ) -> list[sa.Row[Any]]:
        rows: list[sa.Row[Any]] = []
        for condition in matching(column, values, conn.dialect):
            try:
                rows += conn.execute(query.where(condition)).all()
            except sa.exc.SQLAlchemyError as exc:
                raise _StatementError("read", table.name, exc) from exc
        return rows

    def _scalar(self, conn: sa.Connection, query: sa.Select[Any], table: str) -> Any:
        try:
            return conn.execute(query).scalar()
        except sa.exc.SQLAlchemyError as exc:
            raise _StatementError("read", table, exc) from exc

    def _each(
        self, conn: sa.Connection, statement: Any, column: sa.ColumnElement[Any], ids: list[Any]
    ) -> None:
        """An UPDATE or DELETE restricted to `column IN ids`, in batches."""
        for condition in matching(column, ids, conn.dialect):
            try:
                conn.execute(statement.where(condition))
            except sa.exc.SQLAlchemyError as exc:
                raise _StatementError("write", statement.table.name, exc) from exc

    def _insert(
        self,
        conn: sa.Connection,
        table: Any,
        columns: Sequence[str],
        rows: list[tuple[Any, ...]],
    ) -> None:
        """The rows (values of `columns`) in bulk (`db.bulk_insert`: COPY on psycopg)."""
        try:
            bulk_insert(conn, table, columns, rows)
        except sa.exc.SQLAlchemyError as exc:
            raise _StatementError("write", table.name, exc) from exc

    def _error(
        self, verb: str, table: str, exc: Exception, summary: WriteSummary | None
    ) -> CrmError:
        """A CrmError naming the table, the database without its password, and the cause."""
        cause = getattr(exc, "orig", None) or exc
        reason = (str(cause).strip().splitlines() or [""])[0]
        password = self.engine.url.password
        if password:
            reason = reason.replace(str(password), "***")
        where = self.engine.url.render_as_string(hide_password=True)
        message = f"cannot {verb} the CRM table {table!r} at {where}: {type(cause).__name__}: "
        message += reason
        if summary is not None:
            message += f" ({summary.chunks} earlier chunks are committed; re-running skips them)"
        return CrmError(message)
