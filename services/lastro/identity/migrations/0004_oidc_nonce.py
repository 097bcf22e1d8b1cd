"""OpenID Connect: an authorization code keeps the nonce of its request, which the
ID token issued for it carries back to the client.

Revision ID: identity_0004
Revises: identity_0003
"""

from alembic import op
from sqlalchemy import Column, Text

revision = "identity_0004"
down_revision = "identity_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("authorization_codes", Column("nonce", Text))


def downgrade() -> None:
    op.drop_column("authorization_codes", "nonce")
