"""The sync ledger and the per-contact outcome log (DESIGN §3), in the state database.

`sync_ledger`: one row per (audience, CRM contact): what the sync last pushed (address, hash of
fields and tags) and the provider status it saw; the base of the three-way reconciliation.
`sync_outcomes`: one row per contact and write of every push: run, action, outcome, the
provider's code and message. Both are written in one transaction per provider call, so a run
killed half-way leaves the ledger exact for everything that was confirmed.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from newsletter_pipelines.reconcile import LedgerEntry

metadata = sa.MetaData()

ledger = sa.Table(
    "sync_ledger",
    metadata,
    sa.Column("audience", sa.String(100), primary_key=True),
    sa.Column("crm_id", sa.String(100), primary_key=True),
    sa.Column("match_key", sa.Text, nullable=False, index=True),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("provider_id", sa.Text),
    sa.Column("fields_hash", sa.String(64), nullable=False),
    sa.Column("tags", sa.Text, nullable=False),  # JSON list of the CRM tags pushed
    sa.Column("provider_status", sa.String(32), nullable=False),
    sa.Column("refusal_code", sa.Text),
    sa.Column("last_synced_at", sa.DateTime(timezone=True), nullable=False),
)

outcomes = sa.Table(
    "sync_outcomes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False, index=True),
    sa.Column("audience", sa.String(100), nullable=False, index=True),
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
class OutcomeRecord:
    """One contact's outcome of one write, as logged."""

    crm_id: str | None
    email: str | None
    action: str
    outcome: str
    provider_id: str | None = None
    code: str | None = None
    message: str | None = None


def create_tables(engine: sa.Engine) -> None:
    """Create the ledger and outcome tables if missing."""
    metadata.create_all(engine)


def load_ledger(engine: sa.Engine, audience: str) -> list[LedgerEntry]:
    """Every ledger row of an audience."""
    create_tables(engine)
    columns = [
        ledger.c.crm_id,
        ledger.c.match_key,
        ledger.c.email,
        ledger.c.provider_id,
        ledger.c.fields_hash,
        ledger.c.tags,
        ledger.c.provider_status,
        ledger.c.refusal_code,
    ]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(*columns).where(ledger.c.audience == audience)).all()
    tag_set = functools.cache(lambda text: frozenset(json.loads(text)))  # few distinct lists
    return [
        LedgerEntry(
            crm_id,
            key,
            email,
            provider_id,
            fields_hash,
            tag_set(tags),
            status,
            refusal,
        )
        for crm_id, key, email, provider_id, fields_hash, tags, status, refusal in rows
    ]


def record(
    engine: sa.Engine,
    audience: str,
    run_id: str,
    entries: Sequence[LedgerEntry],
    *,
    logged: Sequence[OutcomeRecord] = (),
) -> None:
    """In one transaction: write ledger entries (replacing by CRM id) and log outcomes."""
    now = datetime.now(UTC)
    replaced = {e.crm_id for e in entries}
    with engine.begin() as conn:
        for chunk in _chunks(sorted(replaced), 500):
            conn.execute(
                ledger.delete().where(ledger.c.audience == audience, ledger.c.crm_id.in_(chunk))
            )
        if entries:
            conn.execute(
                ledger.insert(),
                [
                    {
                        "audience": audience,
                        "crm_id": e.crm_id,
                        "match_key": e.match_key,
                        "email": e.email,
                        "provider_id": e.provider_id,
                        "fields_hash": e.fields_hash,
                        "tags": json.dumps(sorted(e.tags), ensure_ascii=False),
                        "provider_status": e.provider_status,
                        "refusal_code": e.refusal_code,
                        "last_synced_at": now,
                    }
                    for e in entries
                ],
            )
        if logged:
            conn.execute(
                outcomes.insert(),
                [
                    {
                        "run_id": run_id,
                        "audience": audience,
                        "crm_id": o.crm_id,
                        "email": o.email,
                        "action": o.action,
                        "outcome": o.outcome,
                        "provider_id": o.provider_id,
                        "code": o.code,
                        "message": (o.message or "")[:2000] or None,
                        "recorded_at": now,
                    }
                    for o in logged
                ],
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


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
