"""Tables and an `apply` function shared by the event pipeline tests and the
consumer subprocess they kill (tests/integration/consumer_process.py), and
:func:`start_group_at_end` for tests that run a service's consumer in a fresh group."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import Column, MetaData, String, Table, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lastro.core.config import Settings
from lastro.core.events import TOPICS, Apply, CloudEvent, inbox_table, outbox_table

TOPIC = "lastro.platform.test"


@dataclass(frozen=True)
class EventTables:
    metadata: MetaData
    outbox: Table
    inbox: Table
    applied: Table


def event_tables(schema: str) -> EventTables:
    metadata = MetaData(schema=schema)
    applied = Table(
        "applied",
        metadata,
        # deliberately no unique constraint: a second application would show up as a second row
        Column("event_id", String(40), nullable=False),
        Column("run", String(40), nullable=False),
    )
    return EventTables(metadata, outbox_table(metadata), inbox_table(metadata), applied)


def apply_into(tables: EventTables, run: str) -> Apply:
    """Record each event of this run in `applied`; events of other runs are ignored."""

    async def apply(conn: AsyncConnection, event: CloudEvent) -> None:
        if event.data.get("run") == run:
            await conn.execute(tables.applied.insert().values(event_id=event.id, run=run))

    return apply


async def applied_counts(engine: AsyncEngine, tables: EventTables, run: str) -> dict[str, int]:
    a = tables.applied
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(a.c.event_id, func.count()).where(a.c.run == run).group_by(a.c.event_id)
        )
        return {event_id: count for event_id, count in rows.all()}


async def start_group_at_end(settings: Settings, group: str, topics: tuple[str, ...]) -> None:
    """Commit the current end of every partition of ``topics`` for ``group``, so a
    consumer of that group reads only what is published from now on (a fresh group
    would otherwise start at the earliest offset and work through whatever earlier
    runs and benchmarks left on the topics before reaching the test's events)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for topic in topics for p in range(TOPICS[topic])]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.commit(dict(ends))
    finally:
        await consumer.stop()
