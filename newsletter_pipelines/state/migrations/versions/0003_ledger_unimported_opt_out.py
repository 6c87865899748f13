"""The ledger keeps the status of an opt-out a report-only or dry run saw and the CRM lacks
(nullable text).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("sync_ledger") as batch:
        batch.add_column(sa.Column("unimported_opt_out", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("sync_ledger", table_kwargs={"sqlite_with_rowid": False}) as batch:
        batch.drop_column("unimported_opt_out")
