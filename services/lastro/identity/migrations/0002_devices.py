"""The devices each user has signed in from (a hash of the device cookie, never the
cookie), so that a sign-in from a new device can be announced.

Revision ID: identity_0002
Revises: identity_0001
"""

from alembic import op
from sqlalchemy import Column, DateTime, ForeignKey, Text

revision = "identity_0002"
down_revision = "identity_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "known_devices",
        Column("user_id", Text, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        Column("device_hash", Text, primary_key=True),
        Column("first_seen_at", DateTime(timezone=True), nullable=False),
        Column("last_seen_at", DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("known_devices")
