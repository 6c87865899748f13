"""What the latest eligibility run stored: table `eligibility_exclusions` (every CRM contact it
excluded, and why) and table `eligibility_baseline` (the last accepted eligible count).

The data team queries them with SQL, e.g.
`SELECT reason, count(*) FROM eligibility_exclusions GROUP BY reason`.
Private contacts are stored with their id and reason only: their data never leaves the CRM.
Runs store both in one transaction, one run at a time (see `record_eligibility`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from datetime import UTC, datetime

import pandas as pd
import sqlalchemy as sa

from newsletter_pipelines.sync.guards import DropVerdict

metadata = sa.MetaData()

exclusions = sa.Table(
    "eligibility_exclusions",
    metadata,
    sa.Column("contact_id", sa.Text, nullable=False, index=True),
    sa.Column("reason", sa.String(32), nullable=False, index=True),
    sa.Column("email", sa.Text),
    sa.Column("detail", sa.Text),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)

baseline = sa.Table(
    "eligibility_baseline",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),  # a single row, id 1
    sa.Column("eligible_count", sa.Integer, nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)

_BATCH = 20_000
# PostgreSQL advisory lock held by the transaction of `record_eligibility`
_LOCK_KEY = zlib.crc32(b"newsletter_pipelines.eligibility")


def record_eligibility(
    engine: sa.Engine,
    excluded: pd.DataFrame,
    run_id: str,
    judge: Callable[[int | None], DropVerdict],
) -> tuple[int, DropVerdict]:
    """Replace the stored exclusions by `excluded` and the baseline by what `judge` decides
    from the stored one, in one transaction that no other run's overlaps (PostgreSQL: an
    advisory lock; SQLite: the database's write lock, taken by the first statement). Returns
    the exclusions stored and the verdict."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        stored = _replace_exclusions(conn, excluded, run_id)
        previous = conn.execute(sa.select(baseline.c.eligible_count)).scalar_one_or_none()
        verdict = judge(previous)
        if verdict.baseline is not None and verdict.baseline != previous:
            conn.execute(baseline.delete())
            values = {"eligible_count": verdict.baseline, "run_id": run_id}
            conn.execute(baseline.insert(), {"id": 1, **values, "recorded_at": datetime.now(UTC)})
    return stored, verdict


def _replace_exclusions(conn: sa.Connection, excluded: pd.DataFrame, run_id: str) -> int:
    """Replace the table's rows by `excluded`; only its columns contact_id, reason, email and
    detail are stored (the logical newsletter and updated_at stay in the asset)."""
    now = datetime.now(UTC)
    rows = [
        {
            "contact_id": str(cid),
            "reason": reason,
            "email": None if pd.isna(email) else str(email).replace("\x00", "\ufffd")[:1000],
            "detail": None if pd.isna(detail) else str(detail)[:1000],
            "run_id": run_id,
            "recorded_at": now,
        }
        for cid, reason, email, detail in excluded[
            ["contact_id", "reason", "email", "detail"]
        ].itertuples(index=False, name=None)
    ]
    conn.execute(exclusions.delete())
    for start in range(0, len(rows), _BATCH):
        conn.execute(exclusions.insert(), rows[start : start + _BATCH])
    return len(rows)


def count_by_reason(engine: sa.Engine) -> dict[str, int]:
    """Stored exclusions per reason."""
    with engine.connect() as conn:
        result = conn.execute(
            sa.select(exclusions.c.reason, sa.func.count()).group_by(exclusions.c.reason)
        )
        return {reason: count for reason, count in result}
