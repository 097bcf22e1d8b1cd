"""Retention of a service's event rows against the dev stack's PostgreSQL.

The events an outbox already published (``<service>.published_events``,
``core.privacy.purge_published_events``): only rows Kafka acknowledged before the
cutoff go, never a pending one, never a kept topic's; a dry run counts; every run is
audited; a cutoff in the future is refused. The inbox's record of applied events
(``<service>.applied_events``, ``core.privacy.purge_applied_events``): only rows
applied before the cutoff go, and a cutoff inside Kafka's redelivery window is
refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from schemas import unique_schema
from sqlalchemy import MetaData, Table, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.schema import CreateSchema, DropSchema

from lastro.core import privacy
from lastro.core.audit import audit_tables
from lastro.core.changes import Caller, ChangeRecorder
from lastro.core.events import EventSigner, enqueue, inbox_table, new_event, outbox_table

KEY = b"integration-published-events-key"
NOW = datetime.now(UTC)
CUTOFF = NOW - timedelta(days=7)
TOPIC = "lastro.platform.test"
CALLER = Caller("service:test/retention", request_id="retention-published-events")


@pytest.fixture
async def recorder(engine: AsyncEngine, signer: EventSigner) -> AsyncIterator[ChangeRecorder]:
    """A recorder over an outbox, an inbox and an audit log of a schema of its own."""
    schema = unique_schema("published_events")
    metadata = MetaData(schema=schema)
    outbox = outbox_table(metadata)
    inbox_table(metadata)
    audit = audit_tables(metadata)
    async with engine.begin() as conn:
        await conn.execute(CreateSchema(schema))
        await conn.run_sync(metadata.create_all)
    yield ChangeRecorder(
        source="/tests", outbox=outbox, audit_tables=audit, signer=signer, audit_key=KEY
    )
    async with engine.begin() as conn:
        await conn.execute(DropSchema(schema, cascade=True))


async def outbox_rows(
    engine: AsyncEngine,
    recorder: ChangeRecorder,
    signer: EventSigner,
    published: list[datetime | None],
    topic: str,
) -> list[str]:
    """One event per entry of ``published``: marked published then, or left pending."""
    outbox, ids = recorder.outbox, []
    async with engine.begin() as conn:
        for at in published:
            event = new_event("lastro.platform.test_happened", "/tests", {"at": str(at)})
            await enqueue(conn, outbox, signer, event, topic=topic, key="k")
            await conn.execute(
                update(outbox).where(outbox.c.event_id == event.id).values(published_at=at)
            )
            ids.append(event.id)
    return ids


async def remaining(engine: AsyncEngine, recorder: ChangeRecorder, ids: list[str]) -> set[str]:
    """Which of ``ids`` are still in the outbox (each run's audit record adds its own
    pending event to the audit stream: not one of these)."""
    outbox = recorder.outbox
    async with engine.connect() as conn:
        found = await conn.scalars(select(outbox.c.event_id).where(outbox.c.event_id.in_(ids)))
        return set(found.all())


async def purged_records(engine: AsyncEngine, recorder: ChangeRecorder) -> list[dict[str, object]]:
    log = recorder.audit_tables.log
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(log.c.target, log.c.details)
            .where(log.c.action == privacy.PURGED)
            .order_by(log.c.seq)
        )
        return [{"target": target, **details} for target, details in rows.all()]


async def run(
    engine: AsyncEngine, recorder: ChangeRecorder, *, dry_run: bool = False, **options: object
) -> int:
    purge = privacy.Purge("tests.published_events", CUTOFF, "purge", dry_run)
    done = await privacy.purge_published_events(engine, recorder, purge, CALLER, now=NOW, **options)
    assert (done.data_class, done.action, done.cutoff) == (
        "tests.published_events",
        "purge",
        CUTOFF,
    )
    return done.affected


async def test_only_events_published_before_the_cutoff_are_deleted(
    engine: AsyncEngine, recorder: ChangeRecorder, signer: EventSigner
) -> None:
    old = NOW - timedelta(days=30)
    expired = await outbox_rows(
        engine, recorder, signer, [old, old, CUTOFF - timedelta(seconds=1)], TOPIC
    )
    kept = await outbox_rows(engine, recorder, signer, [CUTOFF, NOW - timedelta(hours=1)], TOPIC)
    pending = await outbox_rows(engine, recorder, signer, [None], TOPIC)
    async with engine.begin() as conn:  # a pending row is never aged out, however old
        outbox = recorder.outbox
        await conn.execute(
            update(outbox).where(outbox.c.event_id.in_(pending)).values(created_at=old)
        )
    everything = set(expired + kept + pending)

    assert await run(engine, recorder, dry_run=True) == len(expired)
    assert await remaining(engine, recorder, [*everything]) == everything
    assert await run(engine, recorder) == len(expired)
    assert await remaining(engine, recorder, [*everything]) == set(kept + pending)
    assert await run(engine, recorder) == 0

    records = await purged_records(engine, recorder)
    assert [(r["dry_run"], r["affected"]) for r in records] == [
        (True, len(expired)),
        (False, len(expired)),
        (False, 0),
    ]
    assert {r["target"] for r in records} == {"tests.published_events"}
    assert {r["request_id"] for r in records} == {CALLER.request_id}


async def test_a_kept_topic_stays_and_batches_cover_every_expired_row(
    engine: AsyncEngine,
    recorder: ChangeRecorder,
    signer: EventSigner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(privacy, "EVENT_ROWS_BATCH", 2)
    old = NOW - timedelta(days=30)
    expired = await outbox_rows(engine, recorder, signer, [old] * 5, TOPIC)
    rules = await outbox_rows(engine, recorder, signer, [old] * 2, "lastro.fraud.rules")

    assert await run(engine, recorder, keep_topics=("lastro.fraud.rules",)) == len(expired)
    assert await remaining(engine, recorder, expired + rules) == set(rules)


async def test_a_cutoff_in_the_future_is_refused_and_changes_nothing(
    engine: AsyncEngine, recorder: ChangeRecorder, signer: EventSigner
) -> None:
    ids = await outbox_rows(engine, recorder, signer, [NOW - timedelta(days=30)], TOPIC)
    purge = privacy.Purge("tests.published_events", NOW + timedelta(days=1), "purge")
    with pytest.raises(privacy.InvalidCutoff):
        await privacy.purge_published_events(engine, recorder, purge, CALLER, now=NOW)
    assert await remaining(engine, recorder, ids) == set(ids)
    async with engine.connect() as conn:
        log = recorder.audit_tables.log
        assert await conn.scalar(select(func.count()).select_from(log)) == 0


def inbox_of(recorder: ChangeRecorder) -> Table:
    return recorder.outbox.metadata.tables[f"{recorder.outbox.schema}.inbox"]


async def test_applied_events_before_the_cutoff_are_forgotten_and_a_recent_cutoff_is_refused(
    engine: AsyncEngine, recorder: ChangeRecorder
) -> None:
    inbox = inbox_of(recorder)
    applied = {
        "evt_old_1": NOW - timedelta(days=40),
        "evt_old_2": NOW - timedelta(days=31),
        "evt_week": NOW - timedelta(days=8),
        "evt_today": NOW,
    }
    async with engine.begin() as conn:
        await conn.execute(
            insert(inbox),
            [
                {"consumer": consumer, "event_id": event_id, "event_type": "t", "applied_at": at}
                for event_id, at in applied.items()
                for consumer in ("analyser", "notifier")
            ],
        )

    async def left() -> set[tuple[str, str]]:
        async with engine.connect() as conn:
            rows = await conn.execute(select(inbox.c.consumer, inbox.c.event_id))
            return {(consumer, event_id) for consumer, event_id in rows.all()}

    everything = await left()
    thirty_days = privacy.Purge("tests.applied_events", NOW - timedelta(days=30), "purge")
    recent = privacy.Purge("tests.applied_events", NOW - timedelta(days=6), "purge")
    with pytest.raises(privacy.InvalidCutoff, match="at least 7 days ago"):
        await privacy.purge_applied_events(engine, recorder, inbox, recent, CALLER, now=NOW)
    dry = replace(thirty_days, dry_run=True)
    done = await privacy.purge_applied_events(engine, recorder, inbox, dry, CALLER, now=NOW)
    assert done.affected == 4 and await left() == everything
    done = await privacy.purge_applied_events(engine, recorder, inbox, thirty_days, CALLER, now=NOW)
    assert done.affected == 4
    assert await left() == {
        (consumer, event_id)
        for event_id in ("evt_week", "evt_today")
        for consumer in ("analyser", "notifier")
    }
    records = await purged_records(engine, recorder)
    assert [(r["target"], r["dry_run"], r["affected"]) for r in records] == [
        ("tests.applied_events", True, 4),
        ("tests.applied_events", False, 4),
    ]
