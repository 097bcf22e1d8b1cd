"""Identity schema: users, TOTP, recovery codes, clients, codes, login tickets,
refresh-token families, signing keys, and the outbox, inbox and audit log.

Explicit DDL, frozen as released: a later change is a new revision. Tables are
created in the schema :func:`lastro.core.db.migrate` puts first on the search path.

Revision ID: identity_0001
Revises:
"""

from alembic import op
from sqlalchemy import (
    ARRAY,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

from lastro.core import migrations

revision = "identity_0001"
down_revision = None
branch_labels = None
depends_on = None

TABLES = (
    "signing_keys",
    "refresh_tokens",
    "token_families",
    "login_tickets",
    "authorization_codes",
    "clients",
    "recovery_codes",
    "users",
)


def _now() -> Column[object]:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


def upgrade() -> None:
    op.create_table(
        "users",
        Column("id", Text, primary_key=True),
        Column("username", Text, nullable=False, unique=True),
        Column("password_hash", Text, nullable=False),
        Column("totp_secret", Text),
        Column("totp_pending_secret", Text),
        Column("totp_last_step", BigInteger),
        Column("totp_enabled_at", DateTime(timezone=True)),
        _now(),
        CheckConstraint("username = lower(username)", name="users_username_lower"),
    )
    op.create_table(
        "recovery_codes",
        Column("user_id", Text, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        Column("code_hash", Text, primary_key=True),
        Column("used_at", DateTime(timezone=True)),
    )
    op.create_table(
        "clients",
        Column("id", Text, primary_key=True),
        Column("name", Text, nullable=False),
        Column("secret_hash", Text),
        Column("grant_types", ARRAY(Text), nullable=False),
        Column("scopes", ARRAY(Text), nullable=False),
        Column("audiences", ARRAY(Text), nullable=False),
        Column("redirect_uris", ARRAY(Text), nullable=False),
        _now(),
    )
    op.create_index("clients_name", "clients", ["name"])
    op.create_table(
        "authorization_codes",
        Column("code_hash", Text, primary_key=True),
        Column("client_id", Text, ForeignKey("clients.id"), nullable=False),
        Column("user_id", Text, ForeignKey("users.id"), nullable=False),
        Column("redirect_uri", Text, nullable=False),
        Column("scope", Text, nullable=False),
        Column("audiences", ARRAY(Text), nullable=False),
        Column("code_challenge", Text, nullable=False),
        Column("code_challenge_method", Text, nullable=False),
        Column("amr", ARRAY(Text), nullable=False),
        Column("auth_time", BigInteger, nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=False),
        CheckConstraint("code_challenge_method = 'S256'", name="codes_pkce_s256_only"),
    )
    op.create_table(
        "login_tickets",
        Column("ticket_hash", Text, primary_key=True),
        Column("user_id", Text, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        Column("auth_time", BigInteger, nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "token_families",
        Column("id", Text, primary_key=True),
        Column("client_id", Text, ForeignKey("clients.id"), nullable=False),
        Column("user_id", Text, ForeignKey("users.id"), nullable=False),
        _now(),
        Column("revoked_at", DateTime(timezone=True)),
        Column("revoked_reason", Text),
    )
    op.create_table(
        "refresh_tokens",
        Column("token_hash", Text, primary_key=True),
        Column("family_id", Text, ForeignKey("token_families.id"), nullable=False),
        Column("client_id", Text, nullable=False),
        Column("user_id", Text, nullable=False),
        Column("scope", Text, nullable=False),
        Column("audiences", ARRAY(Text), nullable=False),
        Column("amr", ARRAY(Text), nullable=False),
        Column("auth_time", BigInteger, nullable=False),
        Column("issued_at", DateTime(timezone=True), nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=False),
        Column("rotated_at", DateTime(timezone=True)),
    )
    op.create_index("refresh_tokens_family", "refresh_tokens", ["family_id"])
    op.create_table(
        "signing_keys",
        Column("kid", Text, primary_key=True),
        Column("alg", Text, nullable=False),
        Column("public_jwk", JSONB, nullable=False),
        Column("private_jwk", Text, nullable=False),
        Column("activates_at", DateTime(timezone=True), nullable=False),
        Column("expires_at", DateTime(timezone=True)),
        _now(),
        CheckConstraint("private_jwk LIKE 'vault:v%'", name="signing_keys_private_encrypted"),
    )
    migrations.create_outbox()
    migrations.create_inbox()
    migrations.create_audit_log()


def downgrade() -> None:
    migrations.drop_platform_tables()
    for table in TABLES:
        op.drop_table(table)
