"""Queries of users, their second factors and recovery codes, clients and login tickets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import (
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from lastro.core.db import from_row, row_values
from lastro.identity.store.tables import (
    clients,
    known_devices,
    login_tickets,
    recovery_codes,
    users,
)

# ---------------------------------------------------------------- users


@dataclass(frozen=True)
class UserRow:
    id: str
    username: str
    password_hash: str
    totp_secret: str | None
    totp_pending_secret: str | None
    totp_last_step: int | None
    # Whether the seed ciphertexts carry the user id as associated data (identity_0003).
    totp_bound: bool

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
    users.c.totp_bound,
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
    return None if row is None else from_row(UserRow, row)


async def user_by_id(
    conn: AsyncConnection, user_id: str, *, for_update: bool = False
) -> UserRow | None:
    query = select(*_USER_COLUMNS).where(users.c.id == user_id)
    if for_update:
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    return None if row is None else from_row(UserRow, row)


async def set_pending_totp(conn: AsyncConnection, user_id: str, ciphertext: str) -> None:
    """Store a pending seed bound to the user (TOTP is not enabled, so it is the row's
    only seed ciphertext)."""
    await conn.execute(
        update(users)
        .where(users.c.id == user_id)
        .values(totp_pending_secret=ciphertext, totp_bound=True)
    )


@dataclass(frozen=True)
class UnboundSeeds:
    """A user row whose seed ciphertexts were written without associated data."""

    id: str
    totp_secret: str | None
    totp_pending_secret: str | None


async def unbound_totp_seeds(conn: AsyncConnection, after: str, limit: int) -> list[UnboundSeeds]:
    """Users after ``after`` (by id) holding seeds written before identity_0003."""
    rows = await conn.execute(
        select(users.c.id, users.c.totp_secret, users.c.totp_pending_secret)
        .where(
            users.c.id > after,
            users.c.totp_bound.is_(False),
            or_(users.c.totp_secret.is_not(None), users.c.totp_pending_secret.is_not(None)),
        )
        .order_by(users.c.id)
        .limit(limit)
    )
    return [from_row(UnboundSeeds, row) for row in rows]


async def bind_totp_seeds(
    conn: AsyncConnection, was: UnboundSeeds, secret: str | None, pending: str | None
) -> bool:
    """Replace the unbound ciphertexts ``was`` read with bound ones; False (nothing
    written) when the row changed since."""
    result = await conn.execute(
        update(users)
        .where(
            users.c.id == was.id,
            users.c.totp_bound.is_(False),
            users.c.totp_secret.is_not_distinct_from(was.totp_secret),
            users.c.totp_pending_secret.is_not_distinct_from(was.totp_pending_secret),
        )
        .values(totp_secret=secret, totp_pending_secret=pending, totp_bound=True)
    )
    return bool(result.rowcount)


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
    id_token_signed_response_alg: str = "RS256"  # noqa: S105 - an algorithm name


async def insert_client(conn: AsyncConnection, client: ClientRow) -> None:
    await conn.execute(insert(clients).values(row_values(clients, client)))


async def client_by_id(conn: AsyncConnection, client_id: str) -> ClientRow | None:
    row = (await conn.execute(select(clients).where(clients.c.id == client_id))).first()
    return None if row is None else from_row(ClientRow, row)


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


# ---------------------------------------------------------------- devices


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
