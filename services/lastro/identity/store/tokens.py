"""Queries of authorization codes, refresh-token families, signing keys and
housekeeping of what expired."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from lastro.core.db import from_row, row_values
from lastro.identity.store.tables import (
    authorization_codes,
    login_tickets,
    refresh_tokens,
    signing_keys,
    token_families,
)

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
    nonce: str | None = None  # OpenID Connect: the request's nonce, for the ID token


async def insert_code(conn: AsyncConnection, code: CodeRow) -> None:
    await conn.execute(insert(authorization_codes).values(row_values(authorization_codes, code)))


async def code_by_hash(conn: AsyncConnection, code_hash: str) -> CodeRow | None:
    row = (
        await conn.execute(
            select(authorization_codes).where(authorization_codes.c.code_hash == code_hash)
        )
    ).first()
    return None if row is None else from_row(CodeRow, row)


async def nonce_in_use(conn: AsyncConnection, client_id: str, nonce: str) -> bool:
    """Whether a live authorization code of ``client_id`` already carries ``nonce``
    (an authorization request replayed with the same nonce)."""
    found = await conn.execute(
        select(authorization_codes.c.code_hash)
        .where(authorization_codes.c.client_id == client_id, authorization_codes.c.nonce == nonce)
        .limit(1)
    )
    return found.first() is not None


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
    await conn.execute(insert(refresh_tokens).values(row_values(refresh_tokens, token)))


async def refresh_by_hash(conn: AsyncConnection, token_hash: str) -> RefreshRow | None:
    row = (
        await conn.execute(
            select(refresh_tokens, token_families.c.revoked_at.label("family_revoked_at"))
            .join(token_families, token_families.c.id == refresh_tokens.c.family_id)
            .where(refresh_tokens.c.token_hash == token_hash)
        )
    ).first()
    return None if row is None else from_row(RefreshRow, row)


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
    # Whether ``private_jwk`` carries the kid as associated data (identity_0003).
    private_bound: bool


async def insert_signing_key(conn: AsyncConnection, key: SigningKeyRow) -> None:
    await conn.execute(insert(signing_keys).values(row_values(signing_keys, key)))


async def live_signing_keys(conn: AsyncConnection, now: datetime) -> list[SigningKeyRow]:
    """Every key not yet expired, oldest activation first."""
    rows = await conn.execute(
        select(signing_keys)
        .where(or_(signing_keys.c.expires_at.is_(None), signing_keys.c.expires_at > now))
        .order_by(signing_keys.c.activates_at)
    )
    return [from_row(SigningKeyRow, row) for row in rows]


async def unbound_signing_keys(conn: AsyncConnection) -> list[SigningKeyRow]:
    """Every key whose private half was encrypted before identity_0003."""
    rows = await conn.execute(select(signing_keys).where(signing_keys.c.private_bound.is_(False)))
    return [from_row(SigningKeyRow, row) for row in rows]


async def bind_signing_key(conn: AsyncConnection, kid: str, was: str, ciphertext: str) -> bool:
    """Replace the unbound ciphertext ``was`` with a bound one; False if it changed."""
    result = await conn.execute(
        update(signing_keys)
        .where(
            signing_keys.c.kid == kid,
            signing_keys.c.private_bound.is_(False),
            signing_keys.c.private_jwk == was,
        )
        .values(private_jwk=ciphertext, private_bound=True)
    )
    return bool(result.rowcount)


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
