"""Webhook endpoints and their signing secrets (Transit ciphertexts)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    delete,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Row

from lastro.core.db import Tx
from lastro.notifications.domain.kinds import Kind
from lastro.notifications.domain.webhooks import Endpoint, EndpointStatus, SecretVersion
from lastro.notifications.store.tables import (
    webhook_endpoints,
    webhook_secrets,
)


def _endpoint(row: Row[Any]) -> Endpoint:
    return Endpoint(
        id=row.id,
        owner=row.owner,
        url=row.url,
        description=row.description,
        event_types=frozenset(Kind(t) for t in row.event_types),
        status=EndpointStatus(row.status),
        consecutive_failures=row.consecutive_failures,
        notice_email=row.notice_email is not None,
        created_at=row.created_at,
        updated_at=row.updated_at,
        disabled_at=row.disabled_at,
        disabled_reason=row.disabled_reason,
    )


# ---------------------------------------------------------------- endpoints


async def insert_endpoint(
    tx: Tx, endpoint: Endpoint, sealed_notice: str | None, secret_id: str, secret: str
) -> None:
    await tx.execute(
        webhook_endpoints.insert().values(
            id=endpoint.id,
            owner=endpoint.owner,
            url=endpoint.url,
            description=endpoint.description,
            event_types=sorted(k.value for k in endpoint.event_types),
            status=endpoint.status.value,
            consecutive_failures=0,
            notice_email=sealed_notice,
            created_at=endpoint.created_at,
            updated_at=endpoint.updated_at,
        )
    )
    await insert_secret(tx, endpoint.id, secret_id, secret, endpoint.created_at)


async def get_endpoint(
    tx: Tx, endpoint_id: str, owner: str | None = None, *, lock: bool = False
) -> Endpoint | None:
    e = webhook_endpoints
    query = select(e).where(e.c.id == endpoint_id)
    if owner is not None:
        query = query.where(e.c.owner == owner)
    row = (await tx.execute(query.with_for_update() if lock else query)).one_or_none()
    return None if row is None else _endpoint(row)


async def endpoints_by_id(tx: Tx, endpoint_ids: Sequence[str]) -> dict[str, Endpoint]:
    """The endpoints of ``endpoint_ids`` that exist (one query)."""
    if not endpoint_ids:
        return {}
    e = webhook_endpoints
    rows = await tx.execute(select(e).where(e.c.id.in_(sorted(set(endpoint_ids)))))
    return {row.id: _endpoint(row) for row in rows}


async def sealed_notice_email(tx: Tx, endpoint_id: str) -> str | None:
    e = webhook_endpoints
    return await tx.scalar(select(e.c.notice_email).where(e.c.id == endpoint_id))


async def list_endpoints(tx: Tx, owner: str) -> list[Endpoint]:
    e = webhook_endpoints
    rows = await tx.execute(select(e).where(e.c.owner == owner).order_by(e.c.id))
    return [_endpoint(row) for row in rows]


async def endpoints_of(tx: Tx, owners: Sequence[str]) -> list[Endpoint]:
    """Every enabled endpoint of ``owners``."""
    if not owners:
        return []
    e = webhook_endpoints
    rows = await tx.execute(
        select(e)
        .where(e.c.owner.in_(sorted(set(owners))), e.c.status == EndpointStatus.ENABLED.value)
        .order_by(e.c.id)
    )
    return [_endpoint(row) for row in rows]


async def update_endpoint(tx: Tx, endpoint_id: str, values: Mapping[str, Any]) -> None:
    e = webhook_endpoints
    await tx.execute(update(e).where(e.c.id == endpoint_id).values(**values))


async def delete_endpoint(tx: Tx, endpoint_id: str) -> None:
    e = webhook_endpoints
    await tx.execute(delete(e).where(e.c.id == endpoint_id))


async def clear_notice_emails(tx: Tx, owner: str, now: datetime) -> int:
    e = webhook_endpoints
    result = await tx.execute(
        update(e)
        .where(e.c.owner == owner, e.c.notice_email.is_not(None))
        .values(notice_email=None, updated_at=now)
    )
    return int(result.rowcount)


async def count_endpoint_failure(tx: Tx, endpoint_id: str, failed: bool) -> int:
    """Reset (success) or bump (failure) the endpoint's run of failures; returns it."""
    e = webhook_endpoints
    value = e.c.consecutive_failures + 1 if failed else 0
    result = await tx.scalar(
        update(e)
        .where(e.c.id == endpoint_id)
        .values(consecutive_failures=value)
        .returning(e.c.consecutive_failures)
    )
    return int(result or 0)


async def insert_secret(
    tx: Tx, endpoint_id: str, secret_id: str, secret: str, now: datetime
) -> None:
    await tx.execute(
        webhook_secrets.insert().values(
            id=secret_id, endpoint_id=endpoint_id, secret=secret, created_at=now, bound=True
        )
    )


async def unbound_secrets(tx: Tx) -> list[tuple[str, str]]:
    """(id, ciphertext) of the secrets encrypted before they were bound to their row."""
    s = webhook_secrets
    rows = await tx.execute(select(s.c.id, s.c.secret).where(s.c.bound.is_(False)))
    return [(row.id, row.secret) for row in rows]


async def bind_secret(tx: Tx, secret_id: str, was: str, bound: str) -> bool:
    """Replace an unbound ciphertext with its bound one; False if another process did."""
    s = webhook_secrets
    result = await tx.execute(
        update(s)
        .where(s.c.id == secret_id, s.c.secret == was, s.c.bound.is_(False))
        .values(secret=bound, bound=True)
    )
    return bool(result.rowcount)


async def secret_versions(tx: Tx, endpoint_id: str) -> list[SecretVersion]:
    s = webhook_secrets
    rows = await tx.execute(
        select(s.c.id, s.c.created_at, s.c.expires_at)
        .where(s.c.endpoint_id == endpoint_id)
        .order_by(s.c.created_at)
    )
    return [SecretVersion(r.id, r.created_at, r.expires_at) for r in rows]


async def expire_secrets(tx: Tx, expiries: Mapping[str, datetime]) -> None:
    s = webhook_secrets
    for secret_id, at in expiries.items():
        await tx.execute(update(s).where(s.c.id == secret_id).values(expires_at=at))


async def purge_expired_secrets(tx: Tx, now: datetime) -> int:
    s = webhook_secrets
    result = await tx.execute(delete(s).where(s.c.expires_at <= now))
    return int(result.rowcount)


async def active_secrets_of(
    tx: Tx, endpoint_ids: Sequence[str], now: datetime
) -> dict[str, list[tuple[str, str, bool]]]:
    """(id, ciphertext, bound) of the secrets valid at ``now`` of each of
    ``endpoint_ids``, newest first (one query)."""
    found: dict[str, list[tuple[str, str, bool]]] = {i: [] for i in endpoint_ids}
    if not endpoint_ids:
        return found
    s = webhook_secrets
    rows = await tx.execute(
        select(s.c.endpoint_id, s.c.id, s.c.secret, s.c.bound)
        .where(
            s.c.endpoint_id.in_(sorted(set(endpoint_ids))),
            or_(s.c.expires_at.is_(None), s.c.expires_at > now),
        )
        .order_by(s.c.created_at.desc())
    )
    for row in rows:
        found[row.endpoint_id].append((row.id, row.secret, row.bound))
    return found
