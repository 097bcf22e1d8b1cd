"""The identity outbox (events for the notification service) and the devices each
user has signed in from (a hash of the device cookie, never the cookie).

Revision ID: identity_0002_outbox_devices
Revises: 0001_identity
"""

from alembic import op
from sqlalchemy import Column, DateTime, ForeignKey, Text

from lastro.core.migrations import create_outbox

revision = "identity_0002_outbox_devices"
down_revision = "0001_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox()
    op.create_table(
        "known_devices",
        Column("user_id", Text, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        Column("device_hash", Text, primary_key=True),
        Column("first_seen_at", DateTime(timezone=True), nullable=False),
        Column("last_seen_at", DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("known_devices")
    op.drop_table("outbox")
