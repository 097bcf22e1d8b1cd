"""Identity tables (SQLAlchemy Core metadata, no schema) and where their migrations are.

Tables are declared without a schema; :func:`bind_schema` returns an engine that
maps them to the service's schema (``schema_translate_map``), which the migration
in ``migrations/`` created. Secrets are never stored in clear: passwords and client
secrets as argon2id hashes, codes/tickets/refresh tokens as SHA-256 fingerprints,
TOTP seeds and signing keys as Transit ciphertexts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    Table,
    Text,
    false,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.audit import audit_tables
from lastro.core.events import inbox_table, outbox_table

SCHEMA: Final = "identity"
MIGRATIONS: Final = Path(__file__).parents[1] / "migrations"

metadata = MetaData()
audit = audit_tables(metadata)
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)


users = Table(
    "users",
    metadata,
    Column("id", Text, primary_key=True),
    Column("username", Text, nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("totp_secret", Text),  # Transit ciphertext of the confirmed seed
    Column("totp_pending_secret", Text),  # Transit ciphertext during enrolment
    Column("totp_last_step", BigInteger),
    Column("totp_enabled_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The TOTP ciphertexts carry the user id as Transit associated data (identity_0003).
    Column("totp_bound", Boolean, nullable=False, server_default=false()),
    CheckConstraint("username = lower(username)", name="users_username_lower"),
)

recovery_codes = Table(
    "recovery_codes",
    metadata,
    Column("user_id", Text, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("code_hash", Text, primary_key=True),
    Column("used_at", DateTime(timezone=True)),
)

clients = Table(
    "clients",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("secret_hash", Text),  # NULL: a public client (PKCE, no secret)
    Column("grant_types", ARRAY(Text), nullable=False),
    Column("scopes", ARRAY(Text), nullable=False),
    Column("audiences", ARRAY(Text), nullable=False),
    Column("redirect_uris", ARRAY(Text), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # OpenID Connect Core 1.0 §2; rows from before identity_0006 hold ES256
    Column("id_token_signed_response_alg", Text, nullable=False, server_default="RS256"),
    CheckConstraint(
        "id_token_signed_response_alg IN ('RS256', 'ES256')", name="clients_id_token_alg"
    ),
    Index("clients_name", "name"),
)

authorization_codes = Table(
    "authorization_codes",
    metadata,
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
    Column("nonce", Text),
    CheckConstraint("code_challenge_method = 'S256'", name="codes_pkce_s256_only"),
)

login_tickets = Table(
    "login_tickets",
    metadata,
    Column("ticket_hash", Text, primary_key=True),
    Column("user_id", Text, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("auth_time", BigInteger, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

token_families = Table(
    "token_families",
    metadata,
    Column("id", Text, primary_key=True),
    Column("client_id", Text, ForeignKey("clients.id"), nullable=False),
    Column("user_id", Text, ForeignKey("users.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True)),
    Column("revoked_reason", Text),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
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
    Column("rotated_at", DateTime(timezone=True)),  # set once: a second use is a replay
    Index("refresh_tokens_family", "family_id"),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", Text, primary_key=True),
    Column("alg", Text, nullable=False),
    Column("public_jwk", JSONB, nullable=False),
    Column("private_jwk", Text, nullable=False),  # Transit ciphertext of the private JWK
    Column("activates_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The private JWK's ciphertext carries the kid as Transit associated data (identity_0003).
    Column("private_bound", Boolean, nullable=False, server_default=false()),
    CheckConstraint("private_jwk LIKE 'vault:v%'", name="signing_keys_private_encrypted"),
)


known_devices = Table(
    "known_devices",
    metadata,
    Column("user_id", Text, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("device_hash", Text, primary_key=True),
    Column("first_seen_at", DateTime(timezone=True), nullable=False),
    Column("last_seen_at", DateTime(timezone=True), nullable=False),
)


def schema_metadata(schema: str = SCHEMA) -> MetaData:
    """The tables as they stand in ``schema`` (what its migrations build)."""
    bound = MetaData(schema=schema)
    for table in metadata.sorted_tables:
        table.to_metadata(bound, schema=schema)
    return bound


def bind_schema(engine: AsyncEngine, schema: str = SCHEMA) -> AsyncEngine:
    """``engine`` with every identity table mapped to ``schema`` (same pool)."""
    return engine.execution_options(schema_translate_map={None: schema})
