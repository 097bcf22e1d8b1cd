"""Queries of the identity privacy API (``identity/privacy.py``), on the caller's
connection: what a user's account, devices and sessions hold, their erasure, and
the retention of expired sessions. Secrets are never read back (hashes and
ciphertexts stay in the database until erased)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from lastro.identity.store.tables import (
    authorization_codes,
    known_devices,
    login_tickets,
    recovery_codes,
    refresh_tokens,
    token_families,
    users,
)

ERASED_PREFIX: Final = "erased:"
"""An erased user's login name is ``erased:<user id>``: unique, and never a name
anyone can sign up with (``:`` is not allowed in usernames)."""
UNUSABLE_HASH: Final = "!erased"
"""Not an argon2 hash: every password check against it fails."""


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


async def user_record(conn: AsyncConnection, user_id: str) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            select(
                users.c.id,
                users.c.username,
                users.c.totp_enabled_at,
                users.c.created_at,
                (users.c.totp_secret.is_not(None)).label("totp_enabled"),
            ).where(users.c.id == user_id)
        )
    ).one_or_none()
    if row is None:
        return None
    codes = await conn.scalar(
        select(func.count())
        .select_from(recovery_codes)
        .where(recovery_codes.c.user_id == user_id, recovery_codes.c.used_at.is_(None))
    )
    erased = row.username.startswith(ERASED_PREFIX)
    return {
        "id": row.id,
        "login_name": None if erased else row.username,
        "erased": erased,
        "totp_enabled": bool(row.totp_enabled),
        "totp_enabled_at": _iso(row.totp_enabled_at),
        "unused_recovery_codes": int(codes or 0),
        "created_at": _iso(row.created_at),
    }


async def devices_of(conn: AsyncConnection, user_id: str) -> list[dict[str, Any]]:
    d = known_devices
    rows = await conn.execute(
        select(d.c.device_hash, d.c.first_seen_at, d.c.last_seen_at)
        .where(d.c.user_id == user_id)
        .order_by(d.c.first_seen_at)
    )
    return [
        {
            "device_id": f"dev_{row.device_hash[:20]}",
            "first_seen_at": _iso(row.first_seen_at),
            "last_seen_at": _iso(row.last_seen_at),
        }
        for row in rows
    ]


async def sessions_of(conn: AsyncConnection, user_id: str) -> list[dict[str, Any]]:
    """Each sign-in session (a refresh-token family) with its tokens' times."""
    f, r = token_families, refresh_tokens
    rows = await conn.execute(
        select(
            f.c.id,
            f.c.client_id,
            f.c.created_at,
            f.c.revoked_at,
            f.c.revoked_reason,
            func.count(r.c.token_hash).label("tokens"),
            func.max(r.c.expires_at).label("expires_at"),
            func.max(r.c.scope).label("scope"),
        )
        .outerjoin(r, r.c.family_id == f.c.id)
        .where(f.c.user_id == user_id)
        .group_by(f.c.id)
        .order_by(f.c.created_at)
    )
    return [
        {
            "id": row.id,
            "client_id": row.client_id,
            "scope": row.scope,
            "started_at": _iso(row.created_at),
            "expires_at": _iso(row.expires_at),
            "revoked_at": _iso(row.revoked_at),
            "revoked_reason": row.revoked_reason,
            "refresh_tokens": int(row.tokens),
        }
        for row in rows
    ]


async def erase_user(conn: AsyncConnection, user_id: str) -> dict[str, int]:
    """Replace the login name, make the password unusable, drop TOTP seeds, recovery
    codes, devices and every session, code and ticket; rows deleted per kind. The
    user row stays (its id is in other services' records and in the audit log)."""
    counts: dict[str, int] = {}
    renamed = await conn.execute(
        update(users)
        .where(users.c.id == user_id, ~users.c.username.startswith(ERASED_PREFIX))
        .values(username=(ERASED_PREFIX + user_id).lower(), password_hash=UNUSABLE_HASH)
    )
    counts["identity.login_names"] = renamed.rowcount
    seeds = await conn.execute(
        update(users)
        .where(
            users.c.id == user_id,
            or_(users.c.totp_secret.is_not(None), users.c.totp_pending_secret.is_not(None)),
        )
        .values(
            totp_secret=None, totp_pending_secret=None, totp_last_step=None, totp_enabled_at=None
        )
    )
    counts["identity.totp_secrets"] = seeds.rowcount
    for name, table in (
        ("identity.recovery_codes", recovery_codes),
        ("identity.devices", known_devices),
        ("identity.login_tickets", login_tickets),
        ("identity.authorization_codes", authorization_codes),
        ("identity.refresh_tokens", refresh_tokens),
        ("identity.sessions", token_families),
    ):
        deleted = await conn.execute(delete(table).where(table.c.user_id == user_id))
        counts[name] = deleted.rowcount
    return counts


async def purge_sessions(conn: AsyncConnection, cutoff: datetime, *, dry_run: bool) -> int:
    """Sessions over before ``cutoff``: refresh tokens, authorization codes and login
    tickets that expired before it, and families revoked before it or left without
    tokens. Returns how many rows are (or, dry, would be) deleted."""
    r, f = refresh_tokens, token_families
    revoked = select(f.c.id).where(f.c.revoked_at < cutoff)
    doomed_tokens = or_(r.c.expires_at < cutoff, r.c.family_id.in_(revoked))
    if dry_run:
        total = 0
        for table in (authorization_codes, login_tickets):
            total += int(
                await conn.scalar(
                    select(func.count()).select_from(table).where(table.c.expires_at < cutoff)
                )
                or 0
            )
        total += int(await conn.scalar(select(func.count()).where(doomed_tokens)) or 0)
        empty_families = (
            select(func.count())
            .select_from(f)
            .where(
                f.c.created_at < cutoff,
                ~select(r.c.token_hash).where(r.c.family_id == f.c.id, ~doomed_tokens).exists(),
            )
        )
        total += int(await conn.scalar(empty_families) or 0)
        return total
    total = 0
    for table in (authorization_codes, login_tickets):
        total += (await conn.execute(delete(table).where(table.c.expires_at < cutoff))).rowcount
    total += (await conn.execute(delete(r).where(doomed_tokens))).rowcount
    emptied = await conn.execute(
        delete(f).where(
            f.c.created_at < cutoff,
            ~select(r.c.token_hash).where(r.c.family_id == f.c.id).exists(),
        )
    )
    return total + int(emptied.rowcount)
