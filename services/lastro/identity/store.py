"""Identity tables and queries (SQLAlchemy Core on the caller's connection).

Tables are declared without a schema; :func:`bind_schema` returns an engine that
maps them to the service's schema (``schema_translate_map``), which the migration
in ``migrations/`` created. Secrets are never stored in clear: passwords and client
secrets as argon2id hashes, codes/tickets/refresh tokens as SHA-256 fingerprints,
TOTP seeds and signing keys as Transit ciphertexts.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

from sqlalchemy import (
    ARRAY,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    Table,
    Text,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lastro.core.audit import AuditRecord, append, audit_tables
from lastro.core.events import outbox_table

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

SCHEMA: Final = "identity"

metadata = MetaData()
audit = audit_tables(metadata)


async def write_audit(
    conn: AsyncConnection,
    key: bytes,
    *,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    source_ip: str | None,
    **details: Any,
) -> None:
    """Append one audit record to the identity chain inside the caller's transaction."""
    record = AuditRecord(actor, action, target, outcome, source_ip, details)
    await append(conn, audit, record, key)


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
    CheckConstraint("private_jwk LIKE 'vault:v%'", name="signing_keys_private_encrypted"),
)


def bind_schema(engine: AsyncEngine, schema: str = SCHEMA) -> AsyncEngine:
    """``engine`` with every identity table mapped to ``schema`` (same pool)."""
    return engine.execution_options(schema_translate_map={None: schema})


# The row dataclasses below name their fields after their table's columns and hold
# PostgreSQL arrays as tuples; these two helpers convert in each direction.
_Row = TypeVar("_Row", bound="DataclassInstance")


def _values(table: Table, row: DataclassInstance) -> dict[str, Any]:
    """Insert values for ``table`` from a row dataclass (fields that are not columns skipped)."""
    values = {f.name: getattr(row, f.name) for f in fields(row) if f.name in table.c}
    return {name: list(v) if isinstance(v, tuple) else v for name, v in values.items()}


def _from_row(cls: type[_Row], row: Row[*tuple[Any, ...]]) -> _Row:
    """A row dataclass from a result row holding (at least) its fields."""
    values = {f.name: row._mapping[f.name] for f in fields(cls)}
    return cls(**{name: tuple(v) if isinstance(v, list) else v for name, v in values.items()})


# ---------------------------------------------------------------- users


@dataclass(frozen=True)
class UserRow:
    id: str
    username: str
    password_hash: str
    totp_secret: str | None
    totp_pending_secret: str | None
    totp_last_step: int | None

    @property
    def totp_enabled(self) -> bool:
        return self.totp_secret is not None


_USER_COLUMNS: Final = (
    users.c.id,
    users.c.username,
    users.c.password_hash,
    users.c.totp_secret,
    users.c.totp_pending_secret,
    users.c.totp_last_step,
)


async def insert_user(
    conn: AsyncConnection, user_id: str, username: str, password_hash: str
) -> bool:
    """Insert a user; False if the username is taken (nothing written)."""
    result = await conn.execute(
        pg_insert(users)
        .values(id=user_id, username=username, password_hash=password_hash)
        .on_conflict_do_nothing(index_elements=[users.c.username])
    )
    return bool(result.rowcount)


async def user_by_username(conn: AsyncConnection, username: str) -> UserRow | None:
    row = (await conn.execute(select(*_USER_COLUMNS).where(users.c.username == username))).first()
    return None if row is None else _from_row(UserRow, row)


async def user_by_id(
    conn: AsyncConnection, user_id: str, *, for_update: bool = False
) -> UserRow | None:
    query = select(*_USER_COLUMNS).where(users.c.id == user_id)
    if for_update:
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    return None if row is None else _from_row(UserRow, row)


async def set_pending_totp(conn: AsyncConnection, user_id: str, ciphertext: str) -> None:
    await conn.execute(
        update(users).where(users.c.id == user_id).values(totp_pending_secret=ciphertext)
    )


async def enable_totp(conn: AsyncConnection, user_id: str, ciphertext: str, step: int) -> None:
    """Promote the pending seed; the confirming code's step counts as used."""
    await conn.execute(
        update(users)
        .where(users.c.id == user_id)
        .values(
            totp_secret=ciphertext,
            totp_pending_secret=None,
            totp_last_step=step,
            totp_enabled_at=func.now(),
        )
    )


async def disable_totp(conn: AsyncConnection, user_id: str) -> None:
    await conn.execute(
        update(users)
        .where(users.c.id == user_id)
        .values(totp_secret=None, totp_pending_secret=None, totp_enabled_at=None)
    )
    await conn.execute(delete(recovery_codes).where(recovery_codes.c.user_id == user_id))


async def spend_totp_step(conn: AsyncConnection, user_id: str, step: int) -> bool:
    """Record ``step`` as used unless it is not later than the last used one.

    A guarded update: of two concurrent logins with the same code only one wins.
    """
    result = await conn.execute(
        update(users)
        .where(
            users.c.id == user_id,
            or_(users.c.totp_last_step.is_(None), users.c.totp_last_step < step),
        )
        .values(totp_last_step=step)
    )
    return bool(result.rowcount)


async def replace_recovery_codes(conn: AsyncConnection, user_id: str, hashes: list[str]) -> None:
    await conn.execute(delete(recovery_codes).where(recovery_codes.c.user_id == user_id))
    await conn.execute(
        insert(recovery_codes), [{"user_id": user_id, "code_hash": h} for h in hashes]
    )


async def spend_recovery_code(conn: AsyncConnection, user_id: str, code_hash: str) -> bool:
    """Mark an unused recovery code used; False if unknown or already used."""
    result = await conn.execute(
        update(recovery_codes)
        .where(
            recovery_codes.c.user_id == user_id,
            recovery_codes.c.code_hash == code_hash,
            recovery_codes.c.used_at.is_(None),
        )
        .values(used_at=func.now())
    )
    return bool(result.rowcount)


# ---------------------------------------------------------------- clients


@dataclass(frozen=True)
class ClientRow:
    id: str
    name: str
    secret_hash: str | None
    grant_types: tuple[str, ...]
    scopes: tuple[str, ...]
    audiences: tuple[str, ...]
    redirect_uris: tuple[str, ...]


async def insert_client(conn: AsyncConnection, client: ClientRow) -> None:
    await conn.execute(insert(clients).values(_values(clients, client)))


async def client_by_id(conn: AsyncConnection, client_id: str) -> ClientRow | None:
    row = (await conn.execute(select(clients).where(clients.c.id == client_id))).first()
    return None if row is None else _from_row(ClientRow, row)


async def client_named(conn: AsyncConnection, name: str) -> str | None:
    return await conn.scalar(select(clients.c.id).where(clients.c.name == name).limit(1))


# ---------------------------------------------------------------- login tickets


async def insert_login_ticket(
    conn: AsyncConnection, ticket_hash: str, user_id: str, auth_time: int, expires_at: datetime
) -> None:
    await conn.execute(
        insert(login_tickets).values(
            ticket_hash=ticket_hash, user_id=user_id, auth_time=auth_time, expires_at=expires_at
        )
    )


async def take_login_ticket(
    conn: AsyncConnection, ticket_hash: str, now: datetime
) -> tuple[str, int] | None:
    """Consume a live ticket: (user_id, auth_time), or None if unknown, used or expired."""
    row = (
        await conn.execute(
            delete(login_tickets)
            .where(login_tickets.c.ticket_hash == ticket_hash)
            .returning(
                login_tickets.c.user_id, login_tickets.c.auth_time, login_tickets.c.expires_at
            )
        )
    ).first()
    if row is None or row.expires_at <= now:
        return None
    return row.user_id, row.auth_time


# ---------------------------------------------------------------- authorization codes


@dataclass(frozen=True)
class CodeRow:
    code_hash: str
    client_id: str
    user_id: str
    redirect_uri: str
    scope: str
    audiences: tuple[str, ...]
    code_challenge: str
    code_challenge_method: str
    amr: tuple[str, ...]
    auth_time: int
    expires_at: datetime


async def insert_code(conn: AsyncConnection, code: CodeRow) -> None:
    await conn.execute(insert(authorization_codes).values(_values(authorization_codes, code)))


async def code_by_hash(conn: AsyncConnection, code_hash: str) -> CodeRow | None:
    row = (
        await conn.execute(
            select(authorization_codes).where(authorization_codes.c.code_hash == code_hash)
        )
    ).first()
    return None if row is None else _from_row(CodeRow, row)


async def consume_code(conn: AsyncConnection, code_hash: str) -> bool:
    """Delete the code; False if another request already redeemed it."""
    result = await conn.execute(
        delete(authorization_codes).where(authorization_codes.c.code_hash == code_hash)
    )
    return bool(result.rowcount)


# ---------------------------------------------------------------- refresh tokens


@dataclass(frozen=True)
class RefreshRow:
    token_hash: str
    family_id: str
    client_id: str
    user_id: str
    scope: str
    audiences: tuple[str, ...]
    amr: tuple[str, ...]
    auth_time: int
    issued_at: datetime
    expires_at: datetime
    rotated_at: datetime | None = None
    family_revoked_at: datetime | None = None


async def insert_family(
    conn: AsyncConnection, family_id: str, client_id: str, user_id: str
) -> None:
    await conn.execute(
        insert(token_families).values(id=family_id, client_id=client_id, user_id=user_id)
    )


async def insert_refresh(conn: AsyncConnection, token: RefreshRow) -> None:
    await conn.execute(insert(refresh_tokens).values(_values(refresh_tokens, token)))


async def refresh_by_hash(conn: AsyncConnection, token_hash: str) -> RefreshRow | None:
    row = (
        await conn.execute(
            select(refresh_tokens, token_families.c.revoked_at.label("family_revoked_at"))
            .join(token_families, token_families.c.id == refresh_tokens.c.family_id)
            .where(refresh_tokens.c.token_hash == token_hash)
        )
    ).first()
    return None if row is None else _from_row(RefreshRow, row)


async def rotate_refresh(conn: AsyncConnection, token_hash: str) -> bool:
    """Mark a refresh token spent; False if it was already spent or its family revoked
    (a concurrent or replayed use), so the caller must treat the request as reuse."""
    live_family = select(token_families.c.id).where(
        token_families.c.id == refresh_tokens.c.family_id, token_families.c.revoked_at.is_(None)
    )
    result = await conn.execute(
        update(refresh_tokens)
        .where(
            refresh_tokens.c.token_hash == token_hash,
            refresh_tokens.c.rotated_at.is_(None),
            live_family.exists(),
        )
        .values(rotated_at=func.now())
    )
    return bool(result.rowcount)


async def revoke_family(conn: AsyncConnection, family_id: str, reason: str) -> bool:
    """Revoke every refresh token of the family; False if it was already revoked."""
    result = await conn.execute(
        update(token_families)
        .where(and_(token_families.c.id == family_id, token_families.c.revoked_at.is_(None)))
        .values(revoked_at=func.now(), revoked_reason=reason)
    )
    return bool(result.rowcount)


# ---------------------------------------------------------------- signing keys


@dataclass(frozen=True)
class SigningKeyRow:
    kid: str
    alg: str
    public_jwk: dict[str, Any]
    private_jwk: str
    activates_at: datetime
    expires_at: datetime | None


async def insert_signing_key(conn: AsyncConnection, key: SigningKeyRow) -> None:
    await conn.execute(insert(signing_keys).values(_values(signing_keys, key)))


async def live_signing_keys(conn: AsyncConnection, now: datetime) -> list[SigningKeyRow]:
    """Every key not yet expired, oldest activation first."""
    rows = await conn.execute(
        select(signing_keys)
        .where(or_(signing_keys.c.expires_at.is_(None), signing_keys.c.expires_at > now))
        .order_by(signing_keys.c.activates_at)
    )
    return [_from_row(SigningKeyRow, row) for row in rows]


async def lock_signing_keys(conn: AsyncConnection) -> None:
    """Serialise rotations (transaction-scoped advisory lock)."""
    await conn.execute(select(func.pg_advisory_xact_lock(0x1D3A71)))


async def expire_signing_keys(conn: AsyncConnection, kids: list[str], expires_at: datetime) -> None:
    """Schedule superseded keys to leave the JWKS; a key already scheduled keeps its time."""
    await conn.execute(
        update(signing_keys)
        .where(signing_keys.c.kid.in_(kids), signing_keys.c.expires_at.is_(None))
        .values(expires_at=expires_at)
    )


# ---------------------------------------------------------------- housekeeping


async def purge_expired(conn: AsyncConnection, now: datetime) -> dict[str, int]:
    """Delete what can no longer be used: expired authorization codes and login tickets,
    expired refresh tokens (an expired token is refused whether or not it is kept, so
    reuse detection loses nothing), and token families left without tokens. Returns
    the number of rows deleted per table."""
    counts: dict[str, int] = {}
    for table in (authorization_codes, login_tickets, refresh_tokens):
        result = await conn.execute(delete(table).where(table.c.expires_at < now))
        counts[table.name] = result.rowcount
    orphaned = await conn.execute(
        delete(token_families).where(
            ~select(refresh_tokens.c.token_hash)
            .where(refresh_tokens.c.family_id == token_families.c.id)
            .exists()
        )
    )
    counts[token_families.name] = orphaned.rowcount
    return counts


# ---------------------------------------------------------------- events and devices
# Created by revision 0002 (explicit DDL), so they live apart from ``metadata``, which
# revision 0001 creates as a whole.

published = MetaData()
outbox = outbox_table(published)
known_devices = Table(
    "known_devices",
    published,
    Column("user_id", Text, primary_key=True),  # references users.id (ON DELETE CASCADE)
    Column("device_hash", Text, primary_key=True),
    Column("first_seen_at", DateTime(timezone=True), nullable=False),
    Column("last_seen_at", DateTime(timezone=True), nullable=False),
)


async def note_device(conn: AsyncConnection, user_id: str, device_hash: str, now: datetime) -> str:
    """Record a sign-in from ``device_hash``: ``"known"`` (seen before), ``"first"`` (the
    user's first device ever) or ``"new"`` (a device besides earlier ones)."""
    d = known_devices
    seen = await conn.execute(
        update(d)
        .where(d.c.user_id == user_id, d.c.device_hash == device_hash)
        .values(last_seen_at=now)
    )
    if seen.rowcount:
        return "known"
    others = await conn.scalar(select(func.count()).where(d.c.user_id == user_id))
    inserted = await conn.execute(
        pg_insert(d)
        .values(user_id=user_id, device_hash=device_hash, first_seen_at=now, last_seen_at=now)
        .on_conflict_do_nothing()
    )
    if not inserted.rowcount:
        return "known"  # a concurrent sign-in from the same device recorded it first
    return "new" if others else "first"
