"""Transit ciphertexts bound to their owner: a flag per row says whether its
ciphertexts carry Transit associated data (the user id for TOTP seeds, the kid for
signing keys).

Rows written before this revision hold ciphertexts without associated data
(``false``); the service re-encrypts them with it when it starts
(``IdentityService.bind_legacy_secrets``, ``SigningKeys.bind_legacy_keys``) and reads
a row according to its flag until then. New rows are always written bound.

Revision ID: identity_0003
Revises: identity_0002
"""

from alembic import op
from sqlalchemy import Boolean, Column, false

revision = "identity_0003"
down_revision = "identity_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", Column("totp_bound", Boolean, nullable=False, server_default=false()))
    op.add_column(
        "signing_keys", Column("private_bound", Boolean, nullable=False, server_default=false())
    )


def downgrade() -> None:
    # Bound ciphertexts cannot be read without their associated data: a downgrade
    # below this revision must first re-encrypt them unbound (not provided).
    op.drop_column("signing_keys", "private_bound")
    op.drop_column("users", "totp_bound")
