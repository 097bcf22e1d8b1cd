"""Outbox → relay → Kafka → inbox consumer, against the real stack."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import MessageSizeTooLargeError
from eventkit import TOPIC, EventTables, applied_counts, apply_into, event_tables
from opentelemetry import trace
from schemas import unique_schema
from sqlalchemy import MetaData, Table, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lastro.core.config import Settings
from lastro.core.db import create_engine, in_transaction
from lastro.core.events import (
    EVENTS_IGNORED,
    EVENTS_REJECTED,
    RELAY_FAILURES,
    Apply,
    CloudEvent,
    EventConsumer,
    EventSigner,
    OutboxRelay,
    enqueue,
    new_event,
    outbox_table,
)
from lastro.core.security.transit import TransitClient
from lastro.devstack.broker import Kafka

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
async def tables(engine: AsyncEngine) -> AsyncIterator[EventTables]:
    schema = unique_schema("events_test")
    t = event_tables(schema)
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        await conn.run_sync(t.metadata.create_all)
    yield t
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


async def write_events(
    engine: AsyncEngine, tables: EventTables, signer: EventSigner, run: str, count: int
) -> list[str]:
    ids = []
    async with engine.begin() as conn:
        for n in range(count):
            event = new_event("lastro.platform.test_happened", "/tests", {"run": run, "n": n})
            await enqueue(conn, tables.outbox, signer, event, topic=TOPIC, key=f"k{n % 7}")
            ids.append(event.id)
    return ids


async def pending(engine: AsyncEngine, tables: EventTables) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(select(func.count()).where(tables.outbox.c.published_at.is_(None)))
            or 0
        )


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def drain_relay(relay: OutboxRelay, engine: AsyncEngine, tables: EventTables) -> None:
    while await pending(engine, tables):
        await relay.publish_batch()


@pytest.fixture
async def relay(
    settings: Settings, engine: AsyncEngine, tables: EventTables
) -> AsyncIterator[OutboxRelay]:
    r = OutboxRelay(engine, tables.outbox, settings.kafka_bootstrap)
    await r.start()
    yield r
    await r.stop()


def consumer_for(
    settings: Settings,
    engine: AsyncEngine,
    tables: EventTables,
    signer: EventSigner,
    run: str,
    *,
    topic: str = TOPIC,
    apply: Apply | None = None,
    wants: Callable[[str], bool] | None = None,
) -> EventConsumer:
    """A fresh consumer group for this run; by default it records the run's events."""
    return EventConsumer(
        name=f"test-{run}",
        topics=[topic],
        bootstrap_servers=settings.kafka_bootstrap,
        engine=engine,
        inbox=tables.inbox,
        signer=signer,
        apply=apply or apply_into(tables, run),
        wants=wants,
    )


def reader(settings: Settings, group: str | None = None) -> AIOKafkaConsumer:
    """A consumer that commits nothing. It always names a group: aiokafka's consumer
    without one raises CancelledError from ``stop()``."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group or f"test-reader-{uuid.uuid4().hex}",
        enable_auto_commit=False,
    )


async def partitions_of(settings: Settings, topic: str) -> list[TopicPartition]:
    """Every partition of ``topic``, as the broker describes it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = sorted(p["partition"] for p in described["partitions"])
    assert partitions, f"topic {topic} has no partitions"
    return [TopicPartition(topic, p) for p in partitions]


async def partition_offsets(settings: Settings, topic: str = TOPIC) -> dict[int, int]:
    """The end offset of every partition of ``topic`` (where the next record goes)."""
    consumer = reader(settings)
    await consumer.start()
    try:
        partitions = await partitions_of(settings, topic)
        ends = await consumer.end_offsets(partitions)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def committed_offsets(settings: Settings, group: str, topic: str = TOPIC) -> dict[int, int]:
    """The offsets ``group`` has committed on ``topic``, per partition (absent: none)."""
    consumer = reader(settings, group)
    await consumer.start()
    try:
        committed = {}
        for partition in await partitions_of(settings, topic):
            offset = await consumer.committed(partition)
            if offset is not None:
                committed[partition.partition] = offset
        return committed
    finally:
        await consumer.stop()


async def zero_lag(settings: Settings, group: str, topic: str = TOPIC) -> None:
    """Wait until ``group`` has committed every record of ``topic``: everything
    published so far (duplicates included) was handled, not merely the first copies."""

    async def caught_up() -> bool:
        ends = await partition_offsets(settings, topic)
        committed = await committed_offsets(settings, group, topic)
        return all(committed.get(p, 0) >= end for p, end in ends.items() if end > 0)

    await eventually(caught_up, 90, f"zero consumer lag of {group} on {topic}")


async def consume_until(
    settings: Settings,
    consumer: EventConsumer,
    engine: AsyncEngine,
    tables: EventTables,
    run: str,
    expected: int,
    *,
    topic: str = TOPIC,
) -> dict[str, int]:
    """Run ``consumer`` until ``expected`` events of the run were applied and its lag on
    ``topic`` is zero; the counts then include anything applied twice."""
    stop = asyncio.Event()
    await consumer.start()
    task = asyncio.create_task(consumer.run(stop))
    try:

        async def done() -> bool:
            return sum((await applied_counts(engine, tables, run)).values()) >= expected

        await eventually(done, 60, f"{expected} applied events")
        await zero_lag(settings, consumer.name, topic)
    finally:
        stop.set()
        await task
        await consumer.stop()
    return await applied_counts(engine, tables, run)


async def run_offsets(
    settings: Settings, start: dict[int, int], ids: list[str]
) -> dict[str, tuple[int, int]]:
    """Where each event of ``ids`` landed, (partition, offset), reading from ``start``."""
    consumer = reader(settings)
    await consumer.start()
    found: dict[str, tuple[int, int]] = {}
    try:
        partitions = [TopicPartition(TOPIC, p) for p in start]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, start[tp.partition])
        wanted = set(ids)
        deadline = asyncio.get_running_loop().time() + 30
        while wanted - set(found) and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    event_id = json.loads(record.value or b"{}").get("id")
                    if event_id in wanted:
                        found.setdefault(event_id, (record.partition, record.offset))
    finally:
        await consumer.stop()
    assert set(found) == set(ids), "every event of the run is on the topic"
    return found


async def test_outbox_events_reach_the_consumer_exactly_once_even_when_republished(
    settings: Settings,
    engine: AsyncEngine,
    tables: EventTables,
    signer: EventSigner,
    relay: OutboxRelay,
) -> None:
    run = uuid.uuid4().hex
    ids = await write_events(engine, tables, signer, run, 30)
    await drain_relay(relay, engine, tables)
    # Simulate a relay that crashed after Kafka acknowledged but before it marked the rows:
    # every row of this run goes out a second time.
    async with engine.begin() as conn:
        await conn.execute(
            update(tables.outbox).where(tables.outbox.c.event_id.in_(ids)).values(published_at=None)
        )
    await drain_relay(relay, engine, tables)

    # Counted only once the group's lag is zero, i.e. after the second copies were read.
    counts = await consume_until(
        settings,
        consumer_for(settings, engine, tables, signer, run),
        engine,
        tables,
        run,
        len(ids),
    )
    assert counts == {event_id: 1 for event_id in ids}


async def test_consumer_killed_after_applying_before_offset_commit_applies_nothing_twice(
    settings: Settings,
    engine: AsyncEngine,
    tables: EventTables,
    signer: EventSigner,
    relay: OutboxRelay,
) -> None:
    run = uuid.uuid4().hex
    group = f"crash-{run}"
    start = await partition_offsets(settings)
    ids = await write_events(engine, tables, signer, run, 12)
    await drain_relay(relay, engine, tables)
    where = await run_offsets(settings, start, ids)
    argv = [
        sys.executable,
        str(HERE / "consumer_process.py"),
        "--schema",
        str(tables.metadata.schema),
        "--group",
        group,
        "--run",
        run,
    ]

    crashed = await asyncio.create_subprocess_exec(*argv, "--crash-after", "3")
    assert await asyncio.wait_for(crashed.wait(), 90) == -9, "expected death by SIGKILL"
    before_restart = await applied_counts(engine, tables, run)
    assert sum(before_restart.values()) >= 3
    committed = await committed_offsets(settings, group)
    # Batches fetched before the fatal one may have been committed (a fetch can split the
    # run's events); the crash must leave applied events whose offsets are not committed,
    # which the restarted consumer is then handed again.
    uncommitted = [
        event_id
        for event_id in before_restart
        if committed.get(where[event_id][0], 0) <= where[event_id][1]
    ]
    assert uncommitted, "every applied event's offset was committed: nothing to redeliver"

    restarted = await asyncio.create_subprocess_exec(*argv, "--seconds", "90")
    try:

        async def all_applied() -> bool:
            return sum((await applied_counts(engine, tables, run)).values()) >= len(ids)

        await eventually(all_applied, 60, "the restarted consumer to catch up")
        await zero_lag(settings, group)
    finally:
        restarted.terminate()
        await asyncio.wait_for(restarted.wait(), 10)
    assert await applied_counts(engine, tables, run) == {event_id: 1 for event_id in ids}


def fetched(signer: EventSigner, events: list[CloudEvent]) -> list[ConsumerRecord[bytes, bytes]]:
    """Records as one partition's fetch would hand them over (signed envelopes)."""
    return [
        ConsumerRecord(
            topic=TOPIC,
            partition=0,
            offset=offset,
            timestamp=0,
            timestamp_type=0,
            key=None,
            value=json.dumps(signer.sign(event.envelope())).encode(),
            checksum=None,
            serialized_key_size=0,
            serialized_value_size=0,
            headers=(),
        )
        for offset, event in enumerate(events)
    ]


async def test_a_fetched_batch_is_applied_once_each_and_a_poisoned_event_fails_alone(
    settings: Settings, engine: AsyncEngine, tables: EventTables, signer: EventSigner
) -> None:
    """A partition's fetch is applied in one transaction: a copy of an event later in
    the same batch and a redelivered batch apply nothing twice; an event whose apply
    breaks fails on its own, after the events before it were applied one by one."""
    run = uuid.uuid4().hex
    events = [
        new_event("lastro.platform.test_happened", "/tests", {"run": run, "n": n}) for n in range(4)
    ]
    consumer = consumer_for(settings, engine, tables, signer, run)
    records = fetched(signer, [*events, events[1]])
    tampered = fetched(signer, [events[0]])[0]
    tampered = dataclasses.replace(tampered, value=tampered.value.replace(b'"n": 0', b'"n": 9'))

    applied = await consumer.handle_many([*records, tampered])

    assert [r.offset for r in applied] == [0, 1, 2, 3]
    assert await consumer.handle_many(records) == []
    assert await applied_counts(engine, tables, run) == {e.id: 1 for e in events}

    poisoned_run = uuid.uuid4().hex
    later = [
        new_event("lastro.platform.test_happened", "/tests", {"run": poisoned_run, "n": n})
        for n in range(3)
    ]
    record = apply_into(tables, poisoned_run)

    async def breaks_on_the_second(conn: AsyncConnection, event: CloudEvent) -> None:
        if event.data["n"] == 1:
            raise ValueError("a bug in this event's handler")
        await record(conn, event)

    poisoned = consumer_for(
        settings, engine, tables, signer, poisoned_run, apply=breaks_on_the_second
    )
    with pytest.raises(ValueError, match="a bug"):
        await poisoned.handle_many(fetched(signer, later))
    assert await applied_counts(engine, tables, poisoned_run) == {later[0].id: 1}


async def test_types_the_consumer_does_not_want_are_skipped_before_the_inbox(
    settings: Settings, engine: AsyncEngine, tables: EventTables, signer: EventSigner
) -> None:
    """Events of a type outside ``wants`` are counted and skipped: not applied, no
    inbox row, and not even checked (an unsigned one is not a rejection)."""
    run = uuid.uuid4().hex
    wanted = [
        new_event("lastro.platform.test_happened", "/tests", {"run": run, "n": n}) for n in range(2)
    ]
    other = new_event("lastro.platform.test_noted", "/tests", {"run": run, "n": 9})
    unsigned = new_event("lastro.platform.test_noted", "/tests", {"run": run, "n": 10})
    consumer = consumer_for(
        settings,
        engine,
        tables,
        signer,
        run,
        wants=lambda event_type: event_type == "lastro.platform.test_happened",
    )
    records = fetched(signer, [wanted[0], other, wanted[1]])
    raw = dataclasses.replace(records[1], value=json.dumps(unsigned.envelope()).encode())

    applied = await consumer.handle_many([*records, raw])

    assert [r.offset for r in applied] == [0, 2]
    assert await applied_counts(engine, tables, run) == {e.id: 1 for e in wanted}
    async with engine.connect() as conn:
        inbox = await conn.scalars(
            select(tables.inbox.c.event_id).where(
                tables.inbox.c.event_id.in_([e.id for e in [*wanted, other, unsigned]])
            )
        )
        assert sorted(inbox) == sorted(e.id for e in wanted)
    assert EVENTS_IGNORED.labels(consumer.name)._value.get() == 2
    assert EVENTS_REJECTED.labels(consumer.name, "unsigned")._value.get() == 0


async def test_tampered_and_unsigned_events_are_rejected_and_counted(
    settings: Settings,
    engine: AsyncEngine,
    tables: EventTables,
    signer: EventSigner,
) -> None:
    run = uuid.uuid4().hex
    good = new_event("lastro.platform.test_happened", "/tests", {"run": run, "n": 0})
    tampered = signer.sign(
        new_event("lastro.platform.test_happened", "/tests", {"run": run, "n": 1}).envelope()
    )
    tampered["data"]["n"] = 1_000_000
    unsigned = new_event("lastro.platform.test_happened", "/tests", {"run": run, "n": 2})
    forged = dict(signer.sign(unsigned.envelope()))
    forged["signature"] = "v1:" + "A" * 44
    # A topic of its own, so the exact counts are not disturbed by earlier runs;
    # the valid event goes last, so once it is applied every bad one was seen.
    topic = f"lastro.platform.test.{run}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        bad = [json.dumps(e).encode() for e in (tampered, unsigned.envelope(), forged)]
        for value in [*bad, b"{not json", json.dumps(signer.sign(good.envelope())).encode()]:
            await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()

    consumer = consumer_for(settings, engine, tables, signer, run, topic=topic)
    try:
        counts = await consume_until(settings, consumer, engine, tables, run, 1, topic=topic)
    finally:
        await admin.delete_topics([topic])
        await admin.close()
    assert counts == {good.id: 1}
    rejected = {
        reason: EVENTS_REJECTED.labels(consumer.name, reason)._value.get()
        for reason in ("bad-signature", "unsigned", "malformed")
    }
    assert rejected == {"bad-signature": 2, "unsigned": 1, "malformed": 1}


@pytest.fixture
async def own_pipeline(
    disruptive_stack: tuple[Settings, dict[str, str]],
) -> AsyncIterator[tuple[Settings, AsyncEngine, EventTables, EventSigner]]:
    """Outbox tables, engine and signer on the disruptive stack (its own broker)."""
    settings, _ = disruptive_stack
    engine = create_engine(settings, name="lastro-tests-disruptive")
    transit = TransitClient.from_settings(settings)
    schema = unique_schema("events_restart")
    t = event_tables(schema)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
            await conn.run_sync(t.metadata.create_all)
        signer = await EventSigner.from_transit(transit, "lastro-events")
        yield settings, engine, t, signer
    finally:
        await transit.close()
        await engine.dispose()


@pytest.mark.slow
@pytest.mark.disruptive
async def test_relay_publishes_every_pending_row_across_a_broker_restart(
    own_pipeline: tuple[Settings, AsyncEngine, EventTables, EventSigner],
) -> None:
    settings, engine, tables, signer = own_pipeline
    run = uuid.uuid4().hex
    kafka = Kafka(settings)
    relay = OutboxRelay(engine, tables.outbox, settings.kafka_bootstrap, request_timeout_ms=3000)
    await relay.start()
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        first = await write_events(engine, tables, signer, run, 10)
        await eventually(lambda: _none_pending(engine, tables), 30, "first batch published")
        await asyncio.to_thread(kafka.stop)
        assert not await asyncio.to_thread(kafka.healthy)
        second = await write_events(engine, tables, signer, run, 40)
        await asyncio.sleep(3)  # the relay keeps failing and backing off meanwhile
        assert await pending(engine, tables) == len(second)
        await asyncio.to_thread(kafka.start)
        await eventually(lambda: _none_pending(engine, tables), 90, "pending rows published")
    finally:
        stop.set()
        await task
        await relay.stop()
        if not await asyncio.to_thread(kafka.healthy):
            await asyncio.to_thread(kafka.start)

    counts = await consume_until(
        settings,
        consumer_for(settings, engine, tables, signer, run),
        engine,
        tables,
        run,
        len(first) + len(second),
    )
    assert counts == {event_id: 1 for event_id in first + second}


@dataclasses.dataclass(frozen=True)
class MappedOutbox:
    """A schema-less outbox mapped to a schema of its own on the engine, as identity,
    fraud and notifications declare theirs (``schema_translate_map``)."""

    engine: AsyncEngine
    outbox: Table


@pytest.fixture
async def mapped_outbox(engine: AsyncEngine) -> AsyncIterator[MappedOutbox]:
    schema = unique_schema("events_mapped")
    metadata = MetaData()
    outbox = outbox_table(metadata)
    mapped = engine.execution_options(schema_translate_map={None: schema})
    async with mapped.begin() as conn:
        await conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        await conn.run_sync(metadata.create_all)
    yield MappedOutbox(mapped, outbox)
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def pending_in(engine: AsyncEngine, outbox: Table) -> int:
    """Rows of ``outbox`` not yet published."""
    async with engine.connect() as conn:
        found = await conn.scalar(
            select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
        )
        return int(found or 0)


async def test_a_batch_is_published_in_outbox_order_and_marked_only_when_published(
    settings: Settings, mapped_outbox: MappedOutbox, signer: EventSigner
) -> None:
    """The claim marks the rows it returns in the same statement (whose ``RETURNING``
    keeps no order of its own): a batch Kafka refuses (here its first record is over the
    producer's request size) leaves every row pending, and a batch published goes out
    in id order (one key's events land on one partition in the order written)."""
    mapped, outbox = mapped_outbox.engine, mapped_outbox.outbox
    run = uuid.uuid4().hex
    ids = []
    async with mapped.begin() as conn:
        oversized = new_event("lastro.platform.test_happened", "/tests", {"pad": "x" * 1_100_000})
        await enqueue(conn, outbox, signer, oversized, topic=TOPIC, key="k0")
        for n in range(60):
            event = new_event("lastro.platform.test_happened", "/tests", {"run": run, "n": n})
            await enqueue(conn, outbox, signer, event, topic=TOPIC, key=f"k{n % 3}")
            ids.append(event.id)
    # Rewriting every other row moves it to the end of the table, out of id order.
    async with mapped.begin() as conn:
        await conn.execute(update(outbox).where(outbox.c.id % 2 == 0).values(key=outbox.c.key))

    relay = OutboxRelay(mapped, outbox, settings.kafka_bootstrap)
    await relay.start()
    try:
        with pytest.raises(MessageSizeTooLargeError):
            await relay.publish_batch()
        assert await pending_in(mapped, outbox) == len(ids) + 1
        async with mapped.begin() as conn:
            await conn.execute(delete(outbox).where(outbox.c.event_id == oversized.id))
        start = await partition_offsets(settings)
        assert await relay.publish_batch() == len(ids)
        assert await pending_in(mapped, outbox) == 0
        where = await run_offsets(settings, start, ids)
    finally:
        await relay.stop()
    for key in range(3):
        written = ids[key::3]
        assert len({where[event_id][0] for event_id in written}) == 1
        offsets = [where[event_id][1] for event_id in written]
        assert offsets == sorted(offsets)


async def test_a_commit_wakes_an_idle_relay_and_a_rollback_publishes_nothing(
    settings: Settings, engine: AsyncEngine, tables: EventTables, signer: EventSigner
) -> None:
    """An idle relay waits an hour between polls here: only the committing
    transaction's wake-up can make it publish."""
    relay = OutboxRelay(engine, tables.outbox, settings.kafka_bootstrap, idle_interval=3600)
    await relay.start()
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    run = uuid.uuid4().hex

    async def enqueue_one(conn: AsyncConnection, n: int) -> str:
        event = new_event("lastro.platform.test_happened", "/tests", {"run": run, "n": n})
        await enqueue(conn, tables.outbox, signer, event, topic=TOPIC, key="k")
        return event.id

    async def enqueue_then_fail(conn: AsyncConnection) -> None:
        await enqueue_one(conn, -1)
        raise LookupError("the use case failed after enqueueing")

    try:
        await eventually(lambda: _none_pending(engine, tables), 30, "the relay idle")
        with pytest.raises(LookupError):
            await in_transaction(engine, enqueue_then_fail)
        ids = [
            await in_transaction(engine, lambda conn, n=n: enqueue_one(conn, n)) for n in range(3)
        ]
        await eventually(lambda: _none_pending(engine, tables), 30, "woken relay published")
    finally:
        stop.set()
        await task
        await relay.stop()
    counts = await consume_until(
        settings, consumer_for(settings, engine, tables, signer, run), engine, tables, run, 3
    )
    assert counts == {event_id: 1 for event_id in ids}


async def test_a_schemaless_outbox_is_published_from_the_schema_its_engine_maps_it_to(
    settings: Settings, mapped_outbox: MappedOutbox, signer: EventSigner
) -> None:
    """Identity, fraud and notifications declare schema-less tables and map them to
    their schema on the engine (``schema_translate_map``); the relay's SQL, run on the
    driver, names that schema itself (nothing compiles it), so their events leave."""
    mapped, outbox = mapped_outbox.engine, mapped_outbox.outbox
    relay = OutboxRelay(mapped, outbox, settings.kafka_bootstrap)
    await relay.start()
    try:
        async with mapped.begin() as conn:
            for n in range(3):
                event = new_event("lastro.platform.test_happened", "/tests", {"n": n})
                await enqueue(conn, outbox, signer, event, topic=TOPIC, key="k")
        assert await relay.publish_batch() == 3
        assert await pending_in(mapped, outbox) == 0
    finally:
        await relay.stop()


async def test_a_relay_that_fails_on_a_defect_keeps_retrying_and_publishes_once_mended(
    settings: Settings, engine: AsyncEngine, signer: EventSigner
) -> None:
    """An error that is not an outage (here its table missing, as a deployment ahead
    of its migration would have it) does not end the relay while its service runs on:
    it is counted and retried until the table is there, then the events leave."""
    schema = unique_schema("events_mended")
    metadata = MetaData()
    outbox = outbox_table(metadata)
    mapped = engine.execution_options(schema_translate_map={None: schema})
    relay = OutboxRelay(mapped, outbox, settings.kafka_bootstrap, idle_interval=0.2)
    await relay.start()
    stop = asyncio.Event()
    failed = RELAY_FAILURES._value.get()
    task = asyncio.create_task(relay.run(stop))
    try:

        async def relay_failed() -> bool:
            return RELAY_FAILURES._value.get() > failed

        await eventually(relay_failed, 10, "the relay to fail on the missing table")
        assert not task.done()
        async with mapped.begin() as conn:
            await conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
            await conn.run_sync(metadata.create_all)
            event = new_event("lastro.platform.test_happened", "/tests", {"n": 1})
            await enqueue(conn, outbox, signer, event, topic=TOPIC, key="k")

        async def published() -> bool:
            return await pending_in(mapped, outbox) == 0

        await eventually(published, 30, "the relay to publish once the table exists")
    finally:
        stop.set()
        await task
        await relay.stop()
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def test_rows_another_process_wrote_are_published_by_the_fallback_poll(
    settings: Settings, engine: AsyncEngine, tables: EventTables, signer: EventSigner
) -> None:
    """``engine.begin()`` runs no after-commit work, like a write from another process."""
    relay = OutboxRelay(engine, tables.outbox, settings.kafka_bootstrap, idle_interval=0.5)
    await relay.start()
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await eventually(lambda: _none_pending(engine, tables), 30, "the relay idle")
        await write_events(engine, tables, signer, uuid.uuid4().hex, 5)
        await eventually(lambda: _none_pending(engine, tables), 30, "polled rows published")
    finally:
        stop.set()
        await task
        await relay.stop()


async def _none_pending(engine: AsyncEngine, tables: EventTables) -> bool:
    return await pending(engine, tables) == 0


async def test_trace_context_travels_from_the_producing_request_to_the_consumer(
    settings: Settings,
    engine: AsyncEngine,
    tables: EventTables,
    signer: EventSigner,
    relay: OutboxRelay,
) -> None:
    run = uuid.uuid4().hex
    request_span = trace.NonRecordingSpan(
        trace.SpanContext(
            trace_id=int(uuid.uuid4().hex, 16),
            span_id=int(uuid.uuid4().hex[:16], 16),
            is_remote=False,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
    )
    with trace.use_span(request_span):
        event = new_event("lastro.platform.test_happened", "/tests", {"run": run, "n": 0})
    async with engine.begin() as conn:
        await enqueue(conn, tables.outbox, signer, event, topic=TOPIC, key="trace")
    await drain_relay(relay, engine, tables)

    seen: list[int] = []
    record = apply_into(tables, run)

    async def apply(conn: AsyncConnection, applied: CloudEvent) -> None:
        if applied.data.get("run") == run:
            seen.append(trace.get_current_span().get_span_context().trace_id)
        await record(conn, applied)

    consumer = consumer_for(settings, engine, tables, signer, run, apply=apply)
    await consume_until(settings, consumer, engine, tables, run, 1)
    assert event.traceparent is not None
    assert seen == [request_span.get_span_context().trace_id]


async def test_consumer_waits_out_a_database_outage_and_applies_each_event_once(
    settings: Settings,
    engine: AsyncEngine,
    tables: EventTables,
    signer: EventSigner,
    relay: OutboxRelay,
) -> None:
    """The first applications fail as they would while PostgreSQL restarts; the
    consumer keeps going, in order, and nothing is lost or applied twice."""
    run = uuid.uuid4().hex
    ids = await write_events(engine, tables, signer, run, 5)
    await drain_relay(relay, engine, tables)
    record = apply_into(tables, run)
    outages = 3

    async def flaky(conn: AsyncConnection, event: CloudEvent) -> None:
        nonlocal outages
        if event.data.get("run") == run and outages:
            outages -= 1
            raise asyncpg.CannotConnectNowError("the database system is starting up")
        await record(conn, event)

    consumer = consumer_for(settings, engine, tables, signer, run, apply=flaky)
    counts = await consume_until(settings, consumer, engine, tables, run, len(ids))
    assert outages == 0
    assert counts == {event_id: 1 for event_id in ids}
