"""The layout before the ledger's stable ids: ledger, outcome log, eligibility exclusions and
baseline, webhook inbox. A database created before the migrations gets the tables it lacks.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "sync_ledger" not in existing:
        op.create_table(
            "sync_ledger",
            sa.Column("audience", sa.String(100), primary_key=True),
            sa.Column("member_key", sa.Text, primary_key=True),
            sa.Column("email", sa.Text, nullable=False),
            sa.Column("owner", sa.String(100), index=True),
            sa.Column("provider_id", sa.Text),
            sa.Column("tags", sa.Text, nullable=False),
            sa.Column("state", sa.String(32), nullable=False),
            sa.Column("refusal_code", sa.Text),
            sa.Column("refusal_key", sa.String(64)),
            sa.Column("intent", sa.String(32)),
            sa.Column("intent_key", sa.Text),
            sa.Column("last_synced_at", sa.DateTime(timezone=True), nullable=False),
            sqlite_with_rowid=False,
        )
    if "sync_outcomes" not in existing:
        op.create_table(
            "sync_outcomes",
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
    if "eligibility_exclusions" not in existing:
        op.create_table(
            "eligibility_exclusions",
            sa.Column("contact_id", sa.Text, nullable=False, index=True),
            sa.Column("reason", sa.String(32), nullable=False, index=True),
            sa.Column("email", sa.Text),
            sa.Column("detail", sa.Text),
            sa.Column("run_id", sa.String(64), nullable=False),
            sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        )
    if "eligibility_baseline" not in existing:
        op.create_table(
            "eligibility_baseline",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("eligible_count", sa.Integer, nullable=False),
            sa.Column("run_id", sa.String(64), nullable=False),
            sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        )
    if "provider_events" not in existing:
        op.create_table(
            "provider_events",
            sa.Column(
                "id",
                sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                primary_key=True,
                autoincrement=True,
            ),
            sa.Column("audience", sa.String(64), nullable=False),
            sa.Column("provider", sa.String(16), nullable=False),
            sa.Column("type", sa.String(64), nullable=False),
            sa.Column("email", sa.Text),
            sa.Column("payload", sa.Text, nullable=False),
            sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("dedupe_key", sa.String(64), nullable=False, unique=True),
            sa.Column("processed_at", sa.DateTime(timezone=True)),
            sa.Index("ix_provider_events_audience_processed", "audience", "processed_at", "id"),
        )


def downgrade() -> None:
    for table in (
        "provider_events",
        "eligibility_baseline",
        "eligibility_exclusions",
        "sync_outcomes",
        "sync_ledger",
    ):
        op.drop_table(table)
