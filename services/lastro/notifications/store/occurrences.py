"""Occurrences: consumed events waiting to be planned, claimed under a lease."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    any_,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row

from lastro.core.db import Tx
from lastro.notifications.domain.kinds import Kind, Occurrence
from lastro.notifications.store.tables import (
    occurrences,
)


def _occurrence(row: Row[Any]) -> Occurrence:
    return Occurrence(
        event_id=row.event_id,
        kind=Kind(row.kind),
        occurred_at=row.occurred_at,
        facts=row.facts,
        customer_ids=tuple(row.customer_ids),
        user_id=row.user_id,
        traceparent=row.traceparent,
    )


# ---------------------------------------------------------------- occurrences


async def insert_occurrence(tx: Tx, occurrence: Occurrence, now: datetime) -> None:
    await tx.execute(
        pg_insert(occurrences)
        .values(
            event_id=occurrence.event_id,
            kind=occurrence.kind.value,
            occurred_at=occurrence.occurred_at,
            customer_ids=list(occurrence.customer_ids),
            user_id=occurrence.user_id,
            facts=dict(occurrence.facts),
            traceparent=occurrence.traceparent,
            status="pending",
            plan_attempts=0,
            next_plan_at=now,
            received_at=now,
        )
        .on_conflict_do_nothing()
    )


async def claim_occurrences(
    tx: Tx, now: datetime, lease_until: datetime, limit: int
) -> list[tuple[Occurrence, int]]:
    """Pending occurrences due at ``now``, leased until ``lease_until``, with the
    number of planning attempts made so far (this one included)."""
    o = occurrences
    due = (
        select(o.c.event_id)
        .where(o.c.status == "pending", o.c.next_plan_at <= now)
        .order_by(o.c.next_plan_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    rows = await tx.execute(
        update(o)
        .where(o.c.event_id.in_(due))
        .values(next_plan_at=lease_until, plan_attempts=o.c.plan_attempts + 1)
        .returning(o)
    )
    return [(_occurrence(row), row.plan_attempts) for row in rows]


async def occurrences_planned(tx: Tx, event_ids: Sequence[str], now: datetime) -> set[str]:
    """Mark planned and drop the facts (the deliveries hold what they need), in one
    statement; returns the ids this call marked (the others were planned first by
    another claim)."""
    if not event_ids:
        return set()
    o = occurrences
    rows = await tx.execute(
        update(o)
        .where(o.c.event_id.in_(list(event_ids)), o.c.status == "pending")
        .values(status="planned", planned_at=now, facts={})
        .returning(o.c.event_id)
    )
    return set(rows.scalars())


async def defer_occurrence(tx: Tx, event_id: str, at: datetime) -> None:
    o = occurrences
    await tx.execute(
        update(o).where(o.c.event_id == event_id, o.c.status == "pending").values(next_plan_at=at)
    )


async def erase_occurrences_of(tx: Tx, customer_id: str, now: datetime) -> int:
    """Pending occurrences about the customer are settled without telling anyone."""
    o = occurrences
    result = await tx.execute(
        update(o)
        .where(o.c.status == "pending", literal(customer_id) == any_(o.c.customer_ids))
        .values(status="planned", planned_at=now, facts={})
    )
    return int(result.rowcount)
