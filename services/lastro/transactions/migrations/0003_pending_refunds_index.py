"""A partial index on pending refunds, so the worker's sweep for stuck work reads
only the refunds still owed instead of scanning the table every few seconds.

Explicit DDL, frozen as released.

Revision ID: transactions_0003
Revises: transactions_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "transactions_0003"
down_revision = "transactions_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "refunds_pending_idx",
        "refunds",
        ["updated_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("refunds_pending_idx", table_name="refunds")
