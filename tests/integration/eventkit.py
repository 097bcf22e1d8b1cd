"""Tables and an `apply` function shared by the event pipeline tests and the
consumer subprocess they kill (tests/integration/consumer_process.py)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Column, MetaData, String, Table, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lastro.core.events import Apply, CloudEvent, inbox_table, outbox_table

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
