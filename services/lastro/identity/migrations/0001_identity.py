"""Identity schema: users, TOTP, recovery codes, clients, codes, refresh-token families,
signing keys and the audit log.

Revision ID: 0001_identity
Revises:
"""

from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from lastro.core.audit import audit_tables

revision = "0001_identity"
down_revision = None
branch_labels = None
depends_on = None

NOW = sa.text("now()")


def _ts(name: str, nullable: bool = True, default: bool = False) -> "sa.Column[datetime]":
    return sa.Column(
        name, sa.DateTime(timezone=True), nullable=nullable, server_default=NOW if default else None
    )


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("username", sa.Text, nullable=False, unique=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("totp_secret", sa.Text),
        sa.Column("totp_pending_secret", sa.Text),
        sa.Column("totp_last_step", sa.BigInteger),
        _ts("totp_enabled_at"),
        _ts("created_at", nullable=False, default=True),
        sa.CheckConstraint("username = lower(username)", name="users_username_lower"),
    )
    op.create_table(
        "recovery_codes",
        sa.Column(
            "user_id", sa.Text, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("code_hash", sa.Text, primary_key=True),
        _ts("used_at"),
    )
    op.create_table(
        "clients",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("secret_hash", sa.Text),
        sa.Column("grant_types", ARRAY(sa.Text), nullable=False),
        sa.Column("scopes", ARRAY(sa.Text), nullable=False),
        sa.Column("audiences", ARRAY(sa.Text), nullable=False),
        sa.Column("redirect_uris", ARRAY(sa.Text), nullable=False),
        _ts("created_at", nullable=False, default=True),
    )
    op.create_index("clients_name", "clients", ["name"])
    op.create_table(
        "authorization_codes",
        sa.Column("code_hash", sa.Text, primary_key=True),
        sa.Column("client_id", sa.Text, sa.ForeignKey("clients.id"), nullable=False),
        sa.Column("user_id", sa.Text, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("redirect_uri", sa.Text, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("audiences", ARRAY(sa.Text), nullable=False),
        sa.Column("code_challenge", sa.Text, nullable=False),
        sa.Column("code_challenge_method", sa.Text, nullable=False),
        sa.Column("amr", ARRAY(sa.Text), nullable=False),
        sa.Column("auth_time", sa.BigInteger, nullable=False),
        _ts("expires_at", nullable=False),
        sa.CheckConstraint("code_challenge_method = 'S256'", name="codes_pkce_s256_only"),
    )
    op.create_table(
        "login_tickets",
        sa.Column("ticket_hash", sa.Text, primary_key=True),
        sa.Column(
            "user_id", sa.Text, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("auth_time", sa.BigInteger, nullable=False),
        _ts("expires_at", nullable=False),
    )
    op.create_table(
        "token_families",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("client_id", sa.Text, sa.ForeignKey("clients.id"), nullable=False),
        sa.Column("user_id", sa.Text, sa.ForeignKey("users.id"), nullable=False),
        _ts("created_at", nullable=False, default=True),
        _ts("revoked_at"),
        sa.Column("revoked_reason", sa.Text),
    )
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.Text, primary_key=True),
        sa.Column("family_id", sa.Text, sa.ForeignKey("token_families.id"), nullable=False),
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("audiences", ARRAY(sa.Text), nullable=False),
        sa.Column("amr", ARRAY(sa.Text), nullable=False),
        sa.Column("auth_time", sa.BigInteger, nullable=False),
        _ts("issued_at", nullable=False),
        _ts("expires_at", nullable=False),
        _ts("rotated_at"),
    )
    op.create_index("refresh_tokens_family", "refresh_tokens", ["family_id"])
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.Text, primary_key=True),
        sa.Column("alg", sa.Text, nullable=False),
        sa.Column("public_jwk", JSONB, nullable=False),
        sa.Column("private_jwk", sa.Text, nullable=False),
        _ts("activates_at", nullable=False),
        _ts("expires_at"),
        _ts("created_at", nullable=False, default=True),
        sa.CheckConstraint("private_jwk LIKE 'vault:v%'", name="signing_keys_private_encrypted"),
    )
    tables = audit_tables(sa.MetaData())
    bind = op.get_bind()
    tables.log.create(bind)
    tables.head.create(bind)


def downgrade() -> None:
    tables = audit_tables(sa.MetaData())
    bind = op.get_bind()
    tables.head.drop(bind)
    tables.log.drop(bind)
    for table in (
        "signing_keys",
        "refresh_tokens",
        "token_families",
        "login_tickets",
        "authorization_codes",
        "clients",
        "recovery_codes",
        "users",
    ):
        op.drop_table(table)
