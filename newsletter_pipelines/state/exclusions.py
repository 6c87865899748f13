"""Table `eligibility_exclusions`: every CRM contact the latest eligibility run excluded, and why.

The data team queries it with SQL, e.g.
`SELECT reason, count(*) FROM eligibility_exclusions GROUP BY reason`.
Private contacts are stored with their id and reason only: their data never leaves the CRM.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import sqlalchemy as sa

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

_BATCH = 20_000


def replace_exclusions(engine: sa.Engine, excluded: pd.DataFrame, run_id: str) -> int:
    """Replace the table's rows by `excluded`; only its columns contact_id, reason, email and
    detail are stored (the logical newsletter and updated_at stay in the asset)."""
    metadata.create_all(engine)
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
    with engine.begin() as conn:
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
