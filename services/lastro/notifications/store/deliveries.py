"""Deliveries, their attempts and dead letters; retention and the queue gauges.

A delivery is claimed with ``FOR UPDATE SKIP LOCKED`` under a lease; its result is
recorded only by the claim that made it (guarded on the attempt number), so a claim
left by a crashed replica is simply taken over when the lease ends."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    ARRAY,
    DateTime,
    Integer,
    String,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row

from lastro.core.db import Tx
from lastro.notifications.domain.delivery import (
    Attempt,
    AttemptResult,
    Delivery,
    DeliveryStatus,
    Outcome,
)
from lastro.notifications.domain.kinds import Channel, Kind
from lastro.notifications.store.tables import (
    customer_owners,
    dead_letters,
    deliveries,
    delivery_attempts,
    webhook_endpoints,
)


def _delivery(row: Row[Any]) -> Delivery:
    return Delivery(
        id=row.id,
        event_id=row.event_id,
        kind=Kind(row.kind),
        channel=Channel(row.channel),
        destination=row.destination,
        status=DeliveryStatus(row.status),
        attempts=row.attempts,
        round_attempts=row.round_attempts,
        next_attempt_at=row.next_attempt_at,
        created_at=row.created_at,
        customer_id=row.customer_id,
        endpoint_id=row.endpoint_id,
        subject_id=row.subject_id,
        address=row.address,
        content=row.content,
        payload=row.payload,
        delivered_at=row.delivered_at,
        last_error=row.last_error,
        traceparent=row.traceparent,
    )


def _attempt(row: Row[Any]) -> Attempt:
    return Attempt(
        number=row.number,
        started_at=row.started_at,
        finished_at=row.finished_at,
        outcome=None if row.outcome is None else Outcome(row.outcome),
        status_code=row.status_code,
        latency_ms=row.latency_ms,
        error=row.error,
    )


# ---------------------------------------------------------------- deliveries


@dataclass(frozen=True)
class NewDelivery:
    id: str
    event_id: str
    kind: Kind
    channel: Channel
    destination: str
    next_attempt_at: datetime
    customer_id: str | None = None
    endpoint_id: str | None = None
    subject_id: str | None = None
    address: str | None = None
    content: str | None = None
    payload: Mapping[str, Any] | None = None
    traceparent: str | None = None


async def insert_deliveries(tx: Tx, new: Sequence[NewDelivery], now: datetime) -> list[str]:
    """Insert each delivery unless one exists for its (event, channel, destination),
    in one statement; returns the ids inserted now."""
    if not new:
        return []
    rows = [
        {
            "id": d.id,
            "event_id": d.event_id,
            "kind": d.kind.value,
            "channel": d.channel.value,
            "destination": d.destination,
            "customer_id": d.customer_id,
            "endpoint_id": d.endpoint_id,
            "subject_id": d.subject_id,
            "status": DeliveryStatus.PENDING.value,
            "attempts": 0,
            "round_attempts": 0,
            "next_attempt_at": d.next_attempt_at,
            "address": d.address,
            "content": d.content,
            "payload": None if d.payload is None else dict(d.payload),
            "traceparent": d.traceparent,
            "created_at": now,
            "updated_at": now,
        }
        for d in new
    ]
    result = await tx.execute(
        pg_insert(deliveries)
        .on_conflict_do_nothing(constraint="deliveries_once_per_destination")
        .returning(deliveries.c.id, sort_by_parameter_order=True),
        rows,
    )
    return list(result.scalars())


async def claim_deliveries(
    tx: Tx, now: datetime, lease_until: datetime, limit: int
) -> list[Delivery]:
    """Due pending deliveries, leased until ``lease_until``, each with its attempt
    counters already raised and the new attempt row started; an earlier attempt
    left unfinished (its sender died) is closed as ``interrupted``. One statement
    (data-modifying CTEs), so it is atomic without a transaction around it: the
    delivery loop runs it in autocommit."""
    d = deliveries
    due = (
        select(d.c.id)
        .where(
            d.c.status == DeliveryStatus.PENDING.value,
            d.c.next_attempt_at <= now,
            or_(d.c.lease_until.is_(None), d.c.lease_until <= now),
        )
        .order_by(d.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    claimed = (
        update(d)
        .where(d.c.id.in_(due))
        .values(
            lease_until=lease_until,
            attempts=d.c.attempts + 1,
            round_attempts=d.c.round_attempts + 1,
            updated_at=now,
        )
        .returning(d)
        .cte("claimed")
    )
    a = delivery_attempts
    closed = (
        update(a)
        .where(a.c.delivery_id.in_(select(claimed.c.id)), a.c.outcome.is_(None))
        .values(outcome=Outcome.INTERRUPTED.value, finished_at=now)
        .cte("closed")
    )
    started = (
        insert(a)
        .from_select(
            ["delivery_id", "number", "started_at"],
            select(claimed.c.id, claimed.c.attempts, literal(now, DateTime(timezone=True))),
        )
        .cte("started")
    )
    rows = (await tx.execute(select(claimed).add_cte(closed, started))).all()
    return [_delivery(row) for row in rows]


@dataclass(frozen=True)
class FinishedAttempt:
    """One attempt's result and the delivery's next state (``next_attempt_at`` None:
    unchanged)."""

    delivery: Delivery
    result: AttemptResult
    status: DeliveryStatus
    next_attempt_at: datetime | None
    latency_ms: int | None


def _unnest(name: str, **arrays: tuple[Any, Sequence[Any]]) -> Any:
    """A derived table ``name`` from parallel typed arrays (one bound array per column,
    so the statement is the same whatever the batch size)."""
    return (
        func.unnest(
            *(bindparam(f"{name}_{c}", list(v), type_=ARRAY(t)) for c, (t, v) in arrays.items())
        )
        .table_valued(*arrays)
        .render_derived(name=name)
    )


async def finish_attempts(
    tx: Tx, finished: Sequence[FinishedAttempt], finished_at: datetime
) -> set[str]:
    """Record each attempt's result and its delivery's next state, in two statements;
    returns the ids recorded. A delivery whose claim was lost (the lease ran out and
    another replica took it over: its attempt number moved on) is left alone."""
    if not finished:
        return set()
    d, a = deliveries, delivery_attempts
    v = _unnest(
        "v",
        id=(String, [f.delivery.id for f in finished]),
        attempts=(Integer, [f.delivery.attempts for f in finished]),
        status=(String, [f.status.value for f in finished]),
        error=(String, [f.result.error for f in finished]),
        next_at=(DateTime(timezone=True), [f.next_attempt_at for f in finished]),
    )
    recorded = set(
        (
            await tx.execute(
                update(d)
                .where(
                    d.c.id == v.c.id,
                    d.c.attempts == v.c.attempts,
                    d.c.status == DeliveryStatus.PENDING.value,
                )
                .values(
                    status=v.c.status,
                    lease_until=None,
                    updated_at=finished_at,
                    last_error=v.c.error,
                    next_attempt_at=func.coalesce(v.c.next_at, d.c.next_attempt_at),
                    delivered_at=case(
                        (v.c.status == DeliveryStatus.DELIVERED.value, finished_at),
                        else_=d.c.delivered_at,
                    ),
                )
                .returning(d.c.id)
            )
        ).scalars()
    )
    done = [f for f in finished if f.delivery.id in recorded]
    if not done:
        return recorded
    r = _unnest(
        "r",
        id=(String, [f.delivery.id for f in done]),
        number=(Integer, [f.delivery.attempts for f in done]),
        outcome=(String, [f.result.outcome.value for f in done]),
        status_code=(Integer, [f.result.status_code for f in done]),
        latency_ms=(Integer, [f.latency_ms for f in done]),
        error=(String, [f.result.error for f in done]),
    )
    await tx.execute(
        update(a)
        .where(a.c.delivery_id == r.c.id, a.c.number == r.c.number)
        .values(
            finished_at=finished_at,
            outcome=r.c.outcome,
            status_code=r.c.status_code,
            latency_ms=r.c.latency_ms,
            error=r.c.error,
        )
    )
    return recorded


async def dead_letter(tx: Tx, delivery_id: str, reason: str, now: datetime) -> None:
    await tx.execute(
        dead_letters.insert().values(delivery_id=delivery_id, reason=reason, dead_at=now)
    )


async def kill_pending(
    tx: Tx,
    reason: str,
    now: datetime,
    *,
    endpoint_id: str | None = None,
    customer_id: str | None = None,
) -> list[str]:
    """Dead-letter every pending delivery of an endpoint or a customer; returns ids."""
    d = deliveries
    where = [d.c.status == DeliveryStatus.PENDING.value]
    if endpoint_id is not None:
        where.append(and_(d.c.endpoint_id == endpoint_id, d.c.channel == Channel.WEBHOOK.value))
    if customer_id is not None:
        where.append(and_(d.c.customer_id == customer_id, d.c.channel != Channel.WEBHOOK.value))
    ids = list(
        (
            await tx.execute(
                update(d)
                .where(*where)
                .values(status=DeliveryStatus.DEAD.value, lease_until=None, updated_at=now)
                .returning(d.c.id)
            )
        ).scalars()
    )
    for delivery_id in ids:
        await dead_letter(tx, delivery_id, reason, now)
    return ids


async def replay(tx: Tx, delivery_id: str, now: datetime) -> bool:
    """Put a dead delivery back to pending, due now, with a fresh round of attempts."""
    d, q = deliveries, dead_letters
    result = await tx.execute(
        update(d)
        .where(d.c.id == delivery_id, d.c.status == DeliveryStatus.DEAD.value)
        .values(
            status=DeliveryStatus.PENDING.value,
            round_attempts=0,
            next_attempt_at=now,
            lease_until=None,
            updated_at=now,
        )
    )
    if not result.rowcount:
        return False
    await tx.execute(
        update(q)
        .where(q.c.delivery_id == delivery_id, q.c.replayed_at.is_(None))
        .values(replayed_at=now)
    )
    return True


async def get_delivery(tx: Tx, delivery_id: str, *, lock: bool = False) -> Delivery | None:
    d = deliveries
    query = select(d).where(d.c.id == delivery_id)
    row = (await tx.execute(query.with_for_update() if lock else query)).one_or_none()
    return None if row is None else _delivery(row)


async def attempts_of(tx: Tx, delivery_ids: Sequence[str]) -> dict[str, list[Attempt]]:
    a = delivery_attempts
    found: dict[str, list[Attempt]] = {i: [] for i in delivery_ids}
    if not delivery_ids:
        return found
    rows = await tx.execute(
        select(a)
        .where(a.c.delivery_id.in_(list(delivery_ids)))
        .order_by(a.c.delivery_id, a.c.number)
    )
    for row in rows:
        found[row.delivery_id].append(_attempt(row))
    return found


async def dead_reason(tx: Tx, delivery_id: str) -> str | None:
    q = dead_letters
    return await tx.scalar(
        select(q.c.reason)
        .where(q.c.delivery_id == delivery_id, q.c.replayed_at.is_(None))
        .order_by(q.c.id.desc())
        .limit(1)
    )


@dataclass(frozen=True)
class DeliveryFilter:
    """Deliveries to the endpoints of ``owner`` or to customers it owns; optionally
    narrowed. ``after`` is the last id of the previous page (newest first)."""

    owner: str | None
    endpoint_id: str | None = None
    customer_id: str | None = None
    event_id: str | None = None
    status: DeliveryStatus | None = None
    before: str | None = None
    limit: int = 50


async def list_deliveries(tx: Tx, f: DeliveryFilter) -> list[Delivery]:
    d = deliveries
    query = select(d)
    if f.owner is not None:
        e, o = webhook_endpoints, customer_owners
        owned_endpoints = select(e.c.id).where(e.c.owner == f.owner)
        owned_customers = select(o.c.customer_id).where(o.c.owner == f.owner)
        query = query.where(
            or_(
                and_(d.c.channel == Channel.WEBHOOK.value, d.c.endpoint_id.in_(owned_endpoints)),
                and_(d.c.channel != Channel.WEBHOOK.value, d.c.customer_id.in_(owned_customers)),
                and_(
                    d.c.kind == Kind.ENDPOINT_DISABLED.value, d.c.endpoint_id.in_(owned_endpoints)
                ),
            )
        )
    if f.endpoint_id is not None:
        query = query.where(d.c.endpoint_id == f.endpoint_id)
    if f.customer_id is not None:
        query = query.where(d.c.customer_id == f.customer_id)
    if f.event_id is not None:
        query = query.where(d.c.event_id == f.event_id)
    if f.status is not None:
        query = query.where(d.c.status == f.status.value)
    if f.before is not None:
        query = query.where(d.c.id < f.before)
    rows = await tx.execute(query.order_by(d.c.id.desc()).limit(f.limit))
    return [_delivery(row) for row in rows]


async def deliveries_of_customer(tx: Tx, customer_id: str) -> list[Delivery]:
    d = deliveries
    rows = await tx.execute(
        select(d)
        .where(d.c.customer_id == customer_id, d.c.channel != Channel.WEBHOOK.value)
        .order_by(d.c.id)
    )
    return [_delivery(row) for row in rows]


async def anonymize_customer_deliveries(tx: Tx, customer_id: str) -> int:
    d = deliveries
    result = await tx.execute(
        update(d)
        .where(
            d.c.customer_id == customer_id,
            d.c.channel != Channel.WEBHOOK.value,
            or_(d.c.address.is_not(None), d.c.content.is_not(None)),
        )
        .values(address=None, content=None)
    )
    return int(result.rowcount)


# ---------------------------------------------------------------- retention


FINISHED: Final = (DeliveryStatus.DELIVERED.value, DeliveryStatus.DEAD.value)


async def purge_deliveries(tx: Tx, cutoff: datetime, *, dry_run: bool) -> int:
    """Delete finished deliveries created before ``cutoff`` (attempts and dead
    letters go with them); pending ones are still in flight and stay."""
    d = deliveries
    where = and_(d.c.created_at < cutoff, d.c.status.in_(FINISHED))
    if dry_run:
        return int(await tx.scalar(select(func.count()).select_from(d).where(where)) or 0)
    return int((await tx.execute(delete(d).where(where))).rowcount)


async def anonymize_deliveries(tx: Tx, cutoff: datetime, *, dry_run: bool) -> int:
    """Clear address, message and webhook body of finished deliveries before ``cutoff``."""
    d = deliveries
    where = and_(
        d.c.created_at < cutoff,
        d.c.status.in_(FINISHED),
        or_(d.c.address.is_not(None), d.c.content.is_not(None), d.c.payload.is_not(None)),
    )
    if dry_run:
        return int(await tx.scalar(select(func.count()).select_from(d).where(where)) or 0)
    result = await tx.execute(
        update(d).where(where).values(address=None, content=None, payload=None)
    )
    return int(result.rowcount)


async def clear_delivery_column(tx: Tx, column: str, cutoff: datetime, *, dry_run: bool) -> int:
    """NULL ``column`` (address, content or payload) of finished deliveries created
    before ``cutoff``."""
    d = deliveries
    where = and_(d.c.created_at < cutoff, d.c.status.in_(FINISHED), d.c[column].is_not(None))
    if dry_run:
        return int(await tx.scalar(select(func.count()).select_from(d).where(where)) or 0)
    result = await tx.execute(update(d).where(where).values({column: None}))
    return int(result.rowcount)


# ---------------------------------------------------------------- metrics


async def queue_depths(tx: Tx) -> tuple[dict[str, int], dict[str, int]]:
    """(retries waiting per channel, dead letters not replayed per channel)."""
    d, q = deliveries, dead_letters
    waiting = await tx.execute(
        select(d.c.channel, func.count())
        .where(d.c.status == DeliveryStatus.PENDING.value, d.c.attempts > 0)
        .group_by(d.c.channel)
    )
    dead = await tx.execute(
        select(d.c.channel, func.count(func.distinct(q.c.delivery_id)))
        .select_from(q.join(d, d.c.id == q.c.delivery_id))
        .where(q.c.replayed_at.is_(None))
        .group_by(d.c.channel)
    )
    return {row[0]: row[1] for row in waiting}, {row[0]: row[1] for row in dead}
