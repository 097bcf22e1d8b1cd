"""Webhook secrets are encrypted with their row's id as associated data (AES-GCM AAD),
so a ciphertext copied into another row no longer opens there. ``bound`` says which
rows already are; the service binds the older ones when it starts
(``WebhookSecrets.bind_older``).

Revision ID: notifications_0004
Revises: notifications_0003
"""

from alembic import op
from sqlalchemy import Boolean, Column, false

revision = "notifications_0004"
down_revision = "notifications_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "webhook_secrets", Column("bound", Boolean, nullable=False, server_default=false())
    )


def downgrade() -> None:
    op.drop_column("webhook_secrets", "bound")
