"""The notification store's batch statements against the real PostgreSQL: planning a
batch twice inserts each (event, channel, destination) once, a batch claim starts
one attempt per delivery, and a batch of results records only the claims still held."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from schemas import unique_schema
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.db import in_transaction, migrate
from lastro.core.ids import new_id
from lastro.notifications import store
from lastro.notifications.domain.delivery import AttemptResult, DeliveryStatus, Outcome
from lastro.notifications.domain.kinds import Channel, Kind
from lastro.notifications.store import FinishedAttempt, NewDelivery


@pytest.fixture(scope="module")
async def db(engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    schema = unique_schema("notif_batches")
    await migrate(engine, schema, store.MIGRATIONS)
    yield store.bind_schema(engine, schema)
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _email(event_id: str, customer: str, at: datetime) -> NewDelivery:
    return NewDelivery(
        id=new_id("dlv"),
        event_id=event_id,
        kind=Kind.TRANSACTION_SUCCEEDED,
        channel=Channel.EMAIL,
        destination=customer,
        next_attempt_at=at,
        customer_id=customer,
        subject_id=customer,
        address="sealed-address",
        content="sealed-content",
    )


async def test_a_batch_planned_twice_inserts_each_destination_once(db: AsyncEngine) -> None:
    now = datetime.now(UTC)
    event = new_id("evt")
    first = [_email(event, "cus_a", now), _email(event, "cus_b", now)]
    again = [_email(event, "cus_a", now), _email(event, "cus_b", now), _email(event, "cus_c", now)]

    async def plan(batch: list[NewDelivery]) -> list[str]:
        return await in_transaction(db, lambda tx: store.insert_deliveries(tx, batch, now))

    assert await plan(first) == [d.id for d in first]
    assert await plan(again) == [again[2].id]  # only the new destination
    async with db.connect() as conn:
        rows = (
            await conn.execute(
                select(store.deliveries.c.destination, store.deliveries.c.id).where(
                    store.deliveries.c.event_id == event
                )
            )
        ).all()
    assert sorted(rows) == sorted(
        [("cus_a", first[0].id), ("cus_b", first[1].id), ("cus_c", again[2].id)]
    )


async def test_a_batch_of_results_records_only_the_claims_still_held(db: AsyncEngine) -> None:
    now = datetime.now(UTC) - timedelta(seconds=1)
    event = new_id("evt")
    planned = [_email(event, f"cus_{n}", now) for n in range(3)]
    await in_transaction(db, lambda tx: store.insert_deliveries(tx, planned, now))
    ids = {d.id for d in planned}

    async def claim() -> list[store.Delivery]:
        at = datetime.now(UTC)
        async with db.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
            claimed = await store.claim_deliveries(conn, at, at + timedelta(seconds=60), 1000)
        return [d for d in claimed if d.id in ids]

    claimed = await claim()
    assert sorted(d.id for d in claimed) == sorted(ids)
    assert all(d.attempts == 1 for d in claimed)
    attempts = await _attempts(db, ids)
    assert all(attempts[i] == [(1, None)] for i in ids)  # one attempt started each

    # The third delivery's lease ran out and another replica took it over (attempt 2).
    taken = claimed[2]
    async with db.begin() as conn:
        await conn.execute(
            store.deliveries.update()
            .where(store.deliveries.c.id == taken.id)
            .values(lease_until=datetime.now(UTC) - timedelta(seconds=1))
        )
    (retaken,) = await claim()
    assert retaken.id == taken.id and retaken.attempts == 2

    later = datetime.now(UTC) + timedelta(minutes=5)
    results = [
        FinishedAttempt(
            claimed[0], AttemptResult(Outcome.DELIVERED), DeliveryStatus.DELIVERED, None, 12
        ),
        FinishedAttempt(
            claimed[1],
            AttemptResult(Outcome.FAILED, status_code=451, error="greylisted"),
            DeliveryStatus.PENDING,
            later,
            30,
        ),
        FinishedAttempt(  # the stale claim: must not be recorded
            claimed[2], AttemptResult(Outcome.DELIVERED), DeliveryStatus.DELIVERED, None, 5
        ),
    ]
    finished_at = datetime.now(UTC)
    recorded = await in_transaction(db, lambda tx: store.finish_attempts(tx, results, finished_at))
    assert recorded == {claimed[0].id, claimed[1].id}
    async with db.connect() as conn:
        done = await store.get_delivery(conn, claimed[0].id)
        waiting = await store.get_delivery(conn, claimed[1].id)
        other = await store.get_delivery(conn, taken.id)
    assert done is not None and done.status is DeliveryStatus.DELIVERED
    assert done.delivered_at == finished_at
    assert waiting is not None and waiting.status is DeliveryStatus.PENDING
    assert waiting.next_attempt_at == later and waiting.last_error == "greylisted"
    assert waiting.delivered_at is None
    assert other is not None and other.status is DeliveryStatus.PENDING and other.attempts == 2
    attempts = await _attempts(db, ids)
    assert attempts[claimed[0].id] == [(1, Outcome.DELIVERED.value)]
    assert attempts[claimed[1].id] == [(1, Outcome.FAILED.value)]
    # The replaced claim's attempt was closed as interrupted; the new one is still open.
    assert attempts[taken.id] == [(1, Outcome.INTERRUPTED.value), (2, None)]


async def _attempts(db: AsyncEngine, ids: set[str]) -> dict[str, list[tuple[int, str | None]]]:
    a = store.delivery_attempts
    found: dict[str, list[tuple[int, str | None]]] = {i: [] for i in ids}
    async with db.connect() as conn:
        rows = await conn.execute(
            select(a.c.delivery_id, a.c.number, a.c.outcome)
            .where(a.c.delivery_id.in_(sorted(ids)))
            .order_by(a.c.delivery_id, a.c.number)
        )
        for row in rows:
            found[row.delivery_id].append((row.number, row.outcome))
    return found
