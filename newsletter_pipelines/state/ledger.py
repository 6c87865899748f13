"""The sync ledger and the per-contact outcome log, in the state database.

`sync_ledger`: one row per (audience, provider member): the CRM contact that owns it now, what
the sync last pushed, the member's stable id, what it knows of the member's consent, the last
refused write and any write in flight (see `sync.identity`). `sync_outcomes`: one row per
contact and write of every push: run, action, outcome, the provider's code and message. Both
are written in one transaction per provider call, so a run killed half-way leaves the ledger
exact for everything confirmed, and its intents say which writes may have happened.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import repeat

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from newsletter_pipelines.bulk import gc_paused
from newsletter_pipelines.crm.reader import LOOKUP_MAX
from newsletter_pipelines.db import bulk_insert, matching
from newsletter_pipelines.state.columns import (
    has_rows,
    python_values,
    text_frame,
    text_rows,
    text_table,
)
from newsletter_pipelines.sync.identity import SEEN_ACTIVE, Intent, LedgerRow, RowState

metadata = sa.MetaData()

ledger = sa.Table(
    "sync_ledger",
    metadata,
    sa.Column("audience", sa.String(100), primary_key=True),
    sa.Column("member_key", sa.Text, primary_key=True),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("owner", sa.String(100), index=True),
    sa.Column("provider_id", sa.Text),
    sa.Column("tags", sa.Text, nullable=False),  # JSON list of the tags the sync put there
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("refusal_code", sa.Text),
    sa.Column("refusal_key", sa.String(64)),
    sa.Column("intent", sa.String(32)),
    sa.Column("intent_key", sa.Text),
    sa.Column("last_synced_at", sa.DateTime(timezone=True), nullable=False),
    # added by the migrations 0002 and 0003 (migrations/versions)
    sa.Column("stable_id", sa.Text),
    sa.Column("provider_changed_at", sa.Text),  # ISO 8601, as `LedgerRow` holds it
    sa.Column("unimported_opt_out", sa.Text),  # the status of an opt-out the CRM lacks
    # SQLite: rows stored in key order, so an audience's ledger is read in one sequential scan
    sqlite_with_rowid=False,
)
LEDGER_COLUMNS = tuple(
    c.name for c in ledger.columns if c.name not in ("audience", "last_synced_at")
)

outcomes = sa.Table(
    "sync_outcomes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False, index=True),
    sa.Column("audience", sa.String(100), nullable=False),
    sa.Column("crm_id", sa.String(100), index=True),
    sa.Column("email", sa.Text),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("provider_id", sa.Text),
    sa.Column("code", sa.Text),
    sa.Column("message", sa.Text),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class LedgerColumns:
    """Ledger rows column-wise (`LEDGER_COLUMNS`, one list per field, equally long): the bulk
    form of `LedgerRow`s that moved from no other key, which `record` stores without making
    an object per row."""

    member_key: Sequence[str]
    email: Sequence[str]
    owner: Sequence[str | None]
    provider_id: Sequence[str | None]
    tags: Sequence[frozenset[str]]
    state: Sequence[RowState]
    refusal_code: Sequence[str | None]
    refusal_key: Sequence[str | None]
    intent: Sequence[Intent | None]
    intent_key: Sequence[str | None]
    stable_id: Sequence[str | None]
    provider_changed_at: Sequence[str | None]
    unimported_opt_out: Sequence[str | None]

    def __len__(self) -> int:
        return len(self.member_key)


@dataclass(frozen=True)
class OutcomeRecord:
    """One contact's outcome of one write, as logged."""

    crm_id: str | None
    email: str | None
    action: str
    outcome: str
    provider_id: str | None = None
    code: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class OutcomeColumns:
    """Outcome records column-wise (one list per field of `OutcomeRecord`, equally long)."""

    crm_id: Sequence[str | None]
    email: Sequence[str | None]
    action: Sequence[str]
    outcome: Sequence[str]
    provider_id: Sequence[str | None]
    code: Sequence[str | None]
    message: Sequence[str | None]

    def __len__(self) -> int:
        return len(self.crm_id)


def load_ledger_frame(engine: sa.Engine, audience: str) -> pd.DataFrame:
    """Every ledger row of an audience as a frame (columns `LEDGER_COLUMNS`, all of dtype
    `columns.TEXT`: missing values are NaN; `tags` as JSON text), ordered by member key.
    Read column by column (`columns.text_table`): no Python object per value."""
    return text_frame(_by_member_key(text_table(engine, _of_audience(audience))))


def load_small_ledger_frame(engine: sa.Engine, audience: str, most: int) -> pd.DataFrame | None:
    """`load_ledger_frame`, or None when the audience has more than `most` ledger rows
    (counted first, reading at most `most` + 1 keys of the primary key)."""
    if has_rows(engine, _of_audience(audience), most + 1):
        return None
    return load_ledger_frame(engine, audience)


def _of_audience(audience: str) -> sa.Select[tuple[str | None, ...]]:
    """The query of an audience's ledger rows, `LEDGER_COLUMNS`."""
    return sa.select(*(ledger.c[name] for name in LEDGER_COLUMNS)).where(
        ledger.c.audience == audience
    )


def _by_member_key(table: pa.Table) -> pa.Table:
    """`table` ordered by member key, as Python orders str. Sorted here, not by the database:
    PostgreSQL took longer to sort a million rows than to send them (2.2-3.6 s against 1.3-1.8 s
    read, 0.4 s sorted here); SQLite reads them in key order already, which is checked."""
    keys = table.column("member_key")
    if len(keys) < 2 or pc.all(pc.less_equal(keys[:-1], keys[1:])).as_py():
        return table
    return table.take(pc.sort_indices(keys))


def load_ledger_frame_at(
    engine: sa.Engine,
    audience: str,
    keys: Collection[str],
    owners: Collection[str],
    stable_ids: Collection[str] = (),
) -> pd.DataFrame:
    """The audience's ledger rows at these member keys, owned by these CRM ids or of members
    with these stable ids, in the frame `load_ledger_frame` makes (for a run about a few
    addresses, `sync.scope`).

    Past `LOOKUP_MAX` keys, owners and stable ids together, the audience's whole ledger is read
    in one query and matched here (one sequential scan costs less than many IN lists)."""
    columns = [ledger.c[name] for name in LEDGER_COLUMNS]
    of_audience = sa.select(*columns).where(ledger.c.audience == audience)
    rows: dict[str, tuple[object, ...]] = {}
    with gc_paused(), engine.connect() as conn:
        # every column is text: the driver's rows need no result processing (much faster)
        if len(keys) + len(owners) + len(stable_ids) > LOOKUP_MAX:
            key_set, owner_set, stable_set = set(keys), set(owners), set(stable_ids)
            owner_at, stable_at = LEDGER_COLUMNS.index("owner"), LEDGER_COLUMNS.index("stable_id")
            for row in conn.execute(of_audience).cursor.fetchall():
                if row[0] in key_set or row[owner_at] in owner_set or row[stable_at] in stable_set:
                    rows[row[0]] = tuple(row)
        else:
            selectors = (
                (ledger.c.member_key, keys),
                (ledger.c.owner, owners),
                (ledger.c.stable_id, stable_ids),
            )
            for column, values in selectors:
                for condition in matching(column, sorted(values), conn.dialect):
                    fetched = conn.execute(of_audience.where(condition)).cursor.fetchall()
                    rows.update((row[0], tuple(row)) for row in fetched)
    return text_frame(text_rows([rows[k] for k in sorted(rows)], LEDGER_COLUMNS))


def active_count(engine: sa.Engine, audience: str) -> int:
    """How many of the audience's members the ledger knows as subscribed (the audience's size,
    for the mass guards of a run about a few contacts)."""
    states = [s.value for s in SEEN_ACTIVE]
    query = sa.select(sa.func.count()).where(
        ledger.c.audience == audience, ledger.c.state.in_(states)
    )
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def ledger_rows(frame: pd.DataFrame) -> list[LedgerRow]:
    """The rows of a ledger frame as `LedgerRow`s (a missing value as None)."""
    tag_sets: dict[str, frozenset[str]] = {}

    def tags(text: str) -> frozenset[str]:
        found = tag_sets.get(text)
        if found is None:
            found = tag_sets[text] = frozenset(json.loads(text))
        return found

    values = [python_values(frame[name]) for name in LEDGER_COLUMNS]
    return [
        LedgerRow(
            member_key=key,
            email=email,
            owner=owner,
            provider_id=provider_id,
            tags=tags(tag_text),
            state=RowState(state),
            refusal_code=code,
            refusal_key=refusal_key,
            intent=Intent(intent) if intent else None,
            intent_key=intent_key,
            stable_id=stable_id,
            provider_changed_at=provider_changed_at,
            unimported_opt_out=unimported_opt_out,
        )
        for (
            key,
            email,
            owner,
            provider_id,
            tag_text,
            state,
            code,
            refusal_key,
            intent,
            intent_key,
            stable_id,
            provider_changed_at,
            unimported_opt_out,
        ) in zip(*values, strict=True)
    ]


def load_ledger(engine: sa.Engine, audience: str) -> list[LedgerRow]:
    """Every ledger row of an audience, ordered by member key."""
    return ledger_rows(load_ledger_frame(engine, audience))


def record(
    engine: sa.Engine,
    audience: str,
    run_id: str,
    rows: Sequence[LedgerRow] | LedgerColumns,
    *,
    deleted: Sequence[str] = (),
    logged: Sequence[OutcomeRecord] | OutcomeColumns = (),
    fresh: bool = False,
) -> None:
    """In one transaction: write ledger rows (replacing by member key), delete the rows of
    `deleted` member keys and the rows the written ones moved from (`LedgerRow.moved_from`, if
    still the same member's: same stable id, or none yet and an address change to the written
    row's key in flight), and log outcomes. Rows and outcomes may come column-wise.

    Each row is found through the primary key: what a write costs does not grow with the
    ledger (on PostgreSQL, see `_upsert`). `fresh` says the rows' keys are most likely new to
    the ledger (a first sync's intents): on PostgreSQL they are then copied straight into it,
    and upserted only when one of them was there after all (`_insert_fresh`)."""
    now = datetime.now(UTC)
    keys = rows.member_key if isinstance(rows, LedgerColumns) else [r.member_key for r in rows]
    moved = [
        {
            "of_audience": audience,
            "old_key": r.moved_from,
            "of_member": r.stable_id,
            "new_key": r.member_key,
        }
        for r in ([] if isinstance(rows, LedgerColumns) else rows)
        if r.moved_from is not None
    ]
    with gc_paused(), engine.begin() as conn:
        # COPY (psycopg) sends every value as text: the time made text once, not once a value
        # by the driver (half of a write's CPU time, on the push's ledger writer thread)
        stamp = now.isoformat() if conn.dialect.driver == "psycopg" else now
        values = _ledger_values(audience, rows, stamp)
        if moved:
            conn.execute(_DELETE_MOVED, moved)
        if conn.dialect.name == "postgresql":
            gone = sorted(set(deleted) - set(keys))  # a written key's row is replaced anyway
            if not (fresh and not gone and _insert_fresh(conn, values)):
                _upsert(conn, audience, gone, values)
        else:
            replaced = sorted(set(keys) | set(deleted))
            for condition in matching(ledger.c.member_key, replaced, conn.dialect):
                conn.execute(ledger.delete().where(ledger.c.audience == audience, condition))
            bulk_insert(conn, ledger, _LEDGER_INSERTED, values)
        bulk_insert(
            conn, outcomes, _OUTCOME_INSERTED, _outcome_values(audience, run_id, logged, stamp)
        )


def _upsert(
    conn: sa.Connection,
    audience: str,
    deleted: Sequence[str],
    values: Sequence[tuple[str | datetime | None, ...]],
) -> None:
    """PostgreSQL: delete the rows of `deleted` keys one key at a time, then COPY `values` into
    a temporary table and insert them from there, updating every column of a row already
    stored (ON CONFLICT looks each key up in the primary key, whatever the statistics).

    The `DELETE … member_key = ANY(:keys)` this replaces was planned as a scan of every row of
    the audience filtered against the keys (90–130 ms for 2,500 keys at 300,000 rows, 7–12 ms
    through the key): the planner costs a random page read per key, so up to ~330,000 rows the
    scan looked cheaper, and before the table's first ANALYZE it expected the audience to hold
    0.5 % of its rows."""
    if deleted:
        conn.execute(_DELETE_KEY, [{"of_audience": audience, "key": key} for key in deleted])
    if values:
        _chunk.create(conn)
        bulk_insert(conn, _chunk, _LEDGER_INSERTED, values)
        conn.execute(_UPSERT)


def _insert_fresh(conn: sa.Connection, values: Sequence[tuple[str | datetime | None, ...]]) -> bool:
    """PostgreSQL: COPY `values` straight into the ledger, inside a savepoint; False (the
    savepoint rolled back, nothing written) when one of their keys is there already. A chunk
    of 2,500 new rows: about half the time and server work of `_upsert`, which goes through a
    temporary table and looks each key up."""
    try:
        with conn.begin_nested():
            bulk_insert(conn, ledger, _LEDGER_INSERTED, values)
    except sa.exc.IntegrityError:
        return False
    return True


_LEDGER_INSERTED = (  # in the order of `_ledger_values`
    "audience",
    "member_key",
    "email",
    "owner",
    "provider_id",
    "tags",
    "state",
    "refusal_code",
    "refusal_key",
    "intent",
    "intent_key",
    "last_synced_at",
    "stable_id",
    "provider_changed_at",
    "unimported_opt_out",
)
_OUTCOME_INSERTED = (  # in the order of `_outcome_values`
    "run_id",
    "audience",
    "crm_id",
    "email",
    "action",
    "outcome",
    "provider_id",
    "code",
    "message",
    "recorded_at",
)


def _ledger_values(
    audience: str, rows: Sequence[LedgerRow] | LedgerColumns, now: datetime | str
) -> list[tuple[str | datetime | None, ...]]:
    """Ledger rows as values of `_LEDGER_INSERTED`; each set of tags made JSON once."""
    tag_texts: dict[frozenset[str], str] = {}

    def tags(found: frozenset[str]) -> str:
        text = tag_texts.get(found)
        if text is None:
            text = tag_texts[found] = json.dumps(sorted(found), ensure_ascii=False)
        return text

    if isinstance(rows, LedgerColumns):  # the three coded columns made text, then zipped
        return list(
            zip(
                repeat(audience),
                rows.member_key,
                rows.email,
                rows.owner,
                rows.provider_id,
                map(tags, rows.tags),
                [state.value for state in rows.state],
                rows.refusal_code,
                rows.refusal_key,
                [intent.value if intent else None for intent in rows.intent],
                rows.intent_key,
                repeat(now),
                rows.stable_id,
                rows.provider_changed_at,
                rows.unimported_opt_out,
            )
        )
    return [
        (
            audience,
            r.member_key,
            r.email,
            r.owner,
            r.provider_id,
            tags(r.tags),
            r.state.value,
            r.refusal_code,
            r.refusal_key,
            r.intent.value if r.intent else None,
            r.intent_key,
            now,
            r.stable_id,
            r.provider_changed_at,
            r.unimported_opt_out,
        )
        for r in rows
    ]


def _outcome_values(
    audience: str,
    run_id: str,
    logged: Sequence[OutcomeRecord] | OutcomeColumns,
    now: datetime | str,
) -> list[tuple[str | datetime | None, ...]]:
    """Outcome records as values of `_OUTCOME_INSERTED`."""
    if isinstance(logged, OutcomeColumns):
        columns = (logged.crm_id, logged.email, logged.action, logged.outcome)
        more = (logged.provider_id, logged.code, logged.message)
        return [
            (run_id, audience, *values, provider_id, code, _logged_message(message), now)
            for *values, provider_id, code, message in zip(*columns, *more, strict=True)
        ]
    return [
        (
            run_id,
            audience,
            o.crm_id,
            o.email,
            o.action,
            o.outcome,
            o.provider_id,
            o.code,
            _logged_message(o.message),
            now,
        )
        for o in logged
    ]


def _logged_message(message: str | None) -> str | None:
    """A provider's message as logged: its first 2,000 characters, None for none or empty."""
    return (message or "")[:2000] or None


_DELETE_MOVED = ledger.delete().where(
    ledger.c.audience == sa.bindparam("of_audience"),
    ledger.c.member_key == sa.bindparam("old_key"),
    sa.or_(
        ledger.c.stable_id == sa.bindparam("of_member"),
        # a row the sync had not learnt the stable id of yet, whose address change to the new
        # key a killed run left in flight: the same member
        sa.and_(ledger.c.stable_id.is_(None), ledger.c.intent_key == sa.bindparam("new_key")),
    ),
)


_DELETE_KEY = ledger.delete().where(
    ledger.c.audience == sa.bindparam("of_audience"), ledger.c.member_key == sa.bindparam("key")
)
_chunk = sa.Table(  # one `record` transaction's ledger rows on PostgreSQL, dropped at its end
    "sync_ledger_chunk",
    sa.MetaData(),
    *(sa.Column(name, ledger.c[name].type) for name in _LEDGER_INSERTED),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)
_inserted = postgresql.insert(ledger).from_select(
    _LEDGER_INSERTED, sa.select(*(_chunk.c[name] for name in _LEDGER_INSERTED))
)
_UPSERT = _inserted.on_conflict_do_update(
    index_elements=[ledger.c.audience, ledger.c.member_key],
    set_={
        name: _inserted.excluded[name]
        for name in _LEDGER_INSERTED
        if name not in ("audience", "member_key")
    },
)


def outcome_counts(engine: sa.Engine, run_id: str) -> dict[tuple[str, str], int]:
    """Logged outcomes of one run, per (action, outcome)."""
    with engine.connect() as conn:
        result = conn.execute(
            sa.select(outcomes.c.action, outcomes.c.outcome, sa.func.count())
            .where(outcomes.c.run_id == run_id)
            .group_by(outcomes.c.action, outcomes.c.outcome)
        )
        return {(action, outcome): count for action, outcome, count in result}
