"""Occurrences and deliveries keep the trace context (W3C ``traceparent``) of the
event that caused them, so planning and each delivery attempt, run later by the
background loops, join the trace of the request that moved the money.

Revision ID: notifications_0003
Revises: notifications_0002
"""

from alembic import op
from sqlalchemy import Column, Text

revision = "notifications_0003"
down_revision = "notifications_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("occurrences", Column("traceparent", Text))
    op.add_column("deliveries", Column("traceparent", Text))


def downgrade() -> None:
    op.drop_column("deliveries", "traceparent")
    op.drop_column("occurrences", "traceparent")
