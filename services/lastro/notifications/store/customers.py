"""Customers as this service knows them: their owners, their preferences and the
data keys that seal their personal data (``sealing.py``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    delete,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row

from lastro.core.db import Tx
from lastro.notifications.domain.kinds import Channel, Kind
from lastro.notifications.domain.preferences import Preferences, QuietHours
from lastro.notifications.store.tables import (
    customer_owners,
    preferences,
    subject_keys,
)


def _preferences(row: Row[Any]) -> Preferences:
    quiet = None
    if row.quiet_start is not None and row.quiet_end is not None:
        quiet = QuietHours(row.quiet_start, row.quiet_end)
    return Preferences(
        customer_id=row.customer_id,
        locale=row.locale,
        timezone=row.timezone,
        quiet_hours=quiet,
        channels={Kind(k): frozenset(Channel(c) for c in v) for k, v in row.channels.items()},
        marketing_consent=row.marketing_consent,
        updated_at=row.updated_at,
    )


# ---------------------------------------------------------------- subjects and owners


async def subject_key(tx: Tx, subject_id: str) -> str | None:
    """The wrapped data key of ``subject_id``, if it has one."""
    k = subject_keys
    return await tx.scalar(select(k.c.data_key).where(k.c.subject_id == subject_id))


async def subject_keys_of(tx: Tx, subject_ids: Sequence[str]) -> dict[str, str]:
    """The wrapped data keys of those of ``subject_ids`` that have one (one query)."""
    if not subject_ids:
        return {}
    k = subject_keys
    rows = await tx.execute(
        select(k.c.subject_id, k.c.data_key).where(k.c.subject_id.in_(sorted(set(subject_ids))))
    )
    return {row.subject_id: row.data_key for row in rows}


async def insert_subject_key(tx: Tx, subject_id: str, wrapped: str, now: datetime) -> str:
    """Store ``wrapped`` unless the subject has a key already; returns the one kept."""
    k = subject_keys
    await tx.execute(
        pg_insert(k)
        .values(subject_id=subject_id, data_key=wrapped, created_at=now)
        .on_conflict_do_nothing()
    )
    kept = await subject_key(tx, subject_id)
    assert kept is not None
    return kept


async def delete_subject_key(tx: Tx, subject_id: str) -> str | None:
    """Drop a subject's key (crypto-shredding); returns the wrapped key dropped."""
    k = subject_keys
    return await tx.scalar(delete(k).where(k.c.subject_id == subject_id).returning(k.c.data_key))


async def record_owner(tx: Tx, customer_id: str, owner: str, now: datetime) -> None:
    o = customer_owners
    await tx.execute(
        pg_insert(o)
        .values(customer_id=customer_id, owner=owner, learned_at=now)
        .on_conflict_do_update(index_elements=[o.c.customer_id], set_={"owner": owner})
    )


async def record_owners(tx: Tx, owners: Mapping[str, str], now: datetime) -> None:
    """:func:`record_owner` for every (customer id → owner) of ``owners``, in one statement."""
    if not owners:
        return
    o = customer_owners
    stmt = pg_insert(o)
    await tx.execute(
        stmt.on_conflict_do_update(
            index_elements=[o.c.customer_id], set_={"owner": stmt.excluded.owner}
        ),
        [
            {"customer_id": c, "owner": owner, "learned_at": now}
            for c, owner in sorted(owners.items())
        ],
    )


async def owner_of(tx: Tx, customer_id: str) -> str | None:
    o = customer_owners
    return await tx.scalar(select(o.c.owner).where(o.c.customer_id == customer_id))


async def customers_of(tx: Tx, owner: str) -> list[str]:
    o = customer_owners
    rows = await tx.execute(
        select(o.c.customer_id).where(o.c.owner == owner).order_by(o.c.customer_id)
    )
    return [row.customer_id for row in rows]


async def customers_of_owners(tx: Tx, owners: Sequence[str]) -> dict[str, list[str]]:
    """:func:`customers_of` for each of ``owners`` (one query)."""
    found: dict[str, list[str]] = {owner: [] for owner in owners}
    if not owners:
        return found
    o = customer_owners
    rows = await tx.execute(
        select(o.c.owner, o.c.customer_id)
        .where(o.c.owner.in_(sorted(set(owners))))
        .order_by(o.c.customer_id)
    )
    for row in rows:
        found[row.owner].append(row.customer_id)
    return found


async def forget_owner(tx: Tx, customer_id: str) -> int:
    o = customer_owners
    return (await tx.execute(delete(o).where(o.c.customer_id == customer_id))).rowcount


# ---------------------------------------------------------------- preferences


async def get_preferences(tx: Tx, customer_id: str) -> Preferences | None:
    p = preferences
    row = (await tx.execute(select(p).where(p.c.customer_id == customer_id))).one_or_none()
    return None if row is None else _preferences(row)


async def preferences_of(tx: Tx, customer_ids: Sequence[str]) -> dict[str, Preferences]:
    """The stored preferences of those of ``customer_ids`` that have some (one query)."""
    if not customer_ids:
        return {}
    p = preferences
    rows = await tx.execute(select(p).where(p.c.customer_id.in_(sorted(set(customer_ids)))))
    return {row.customer_id: _preferences(row) for row in rows}


async def put_preferences(tx: Tx, prefs: Preferences, channels: Mapping[str, list[str]]) -> None:
    p = preferences
    quiet = prefs.quiet_hours
    values: dict[str, Any] = {
        "locale": prefs.locale,
        "timezone": prefs.timezone,
        "quiet_start": None if quiet is None else quiet.start,
        "quiet_end": None if quiet is None else quiet.end,
        "channels": dict(channels),
        "marketing_consent": prefs.marketing_consent,
        "updated_at": prefs.updated_at,
    }
    await tx.execute(
        pg_insert(p)
        .values(customer_id=prefs.customer_id, **values)
        .on_conflict_do_update(index_elements=[p.c.customer_id], set_=values)
    )


async def delete_preferences(tx: Tx, customer_id: str) -> int:
    p = preferences
    return (await tx.execute(delete(p).where(p.c.customer_id == customer_id))).rowcount
