"""The ledger keeps each member's stable id and the provider's time of an opted-out member's last
change (nullable text: the next sync writes them).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
COLUMNS = ("stable_id", "provider_changed_at")


def upgrade() -> None:
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("sync_ledger")}
    with op.batch_alter_table("sync_ledger") as batch:
        for name in COLUMNS:
            if name not in present:  # a ledger from before the migrations may have stable_id
                batch.add_column(sa.Column(name, sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("sync_ledger", table_kwargs={"sqlite_with_rowid": False}) as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
