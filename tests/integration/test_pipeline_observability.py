"""What the event pipeline says about itself, against the real PostgreSQL and Kafka:
outbox backlog and age, consumer-group lag, and the spans of a traced event from the
change that wrote it, through the relay's publish, to the consumer."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from eventkit import TOPIC, EventTables, apply_into, event_tables
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import generate_latest
from schemas import unique_schema
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings
from lastro.core.events import EventConsumer, EventSigner, OutboxRelay, enqueue, new_event
from lastro.core.lag import CONSUMER_LAG, ConsumerLagMonitor, OutboxMonitor
from lastro.core.observability import metrics_registry


@pytest.fixture(scope="module")
async def tables(engine: AsyncEngine) -> AsyncIterator[EventTables]:
    schema = unique_schema("pipeline_obs")
    t = event_tables(schema)
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        await conn.run_sync(t.metadata.create_all)
    yield t
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


def exposed(name: str, **labels: str) -> float | None:
    """The value ``/metrics`` serves for one series, None when it is not there."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in generate_latest(metrics_registry()).decode().splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def write(engine: AsyncEngine, tables: EventTables, signer: EventSigner, n: int) -> None:
    async with engine.begin() as conn:
        for i in range(n):
            event = new_event("lastro.platform.test_happened", "/tests", {"n": i})
            await enqueue(conn, tables.outbox, signer, event, topic=TOPIC, key=f"k{i}")


async def test_the_outbox_backlog_and_the_age_of_its_oldest_event_are_exported(
    engine: AsyncEngine, tables: EventTables, signer: EventSigner
) -> None:
    monitor = OutboxMonitor(engine, tables.outbox)
    schema = tables.outbox.schema
    assert schema is not None and monitor.name == schema
    assert await monitor.measure() == (0, None)
    assert exposed("lastro_outbox_oldest_pending_age_seconds", outbox=schema) == 0.0

    await write(engine, tables, signer, 3)
    async with engine.begin() as conn:  # as if the relay had been stuck for 90 s
        await conn.execute(
            update(tables.outbox).values(
                created_at=func.now() - func.make_interval(0, 0, 0, 0, 0, 0, 90)
            )
        )
    count, oldest = await monitor.measure()
    assert count == 3 and oldest is not None
    assert exposed("lastro_outbox_pending_events", outbox=schema) == 3.0
    age = exposed("lastro_outbox_oldest_pending_age_seconds", outbox=schema)
    assert age is not None and 90 <= age < 120
    await asyncio.sleep(1.1)  # the age grows between measurements, as the row keeps waiting
    later = exposed("lastro_outbox_oldest_pending_age_seconds", outbox=schema)
    assert later is not None and later >= age + 1

    async with engine.begin() as conn:
        await conn.execute(update(tables.outbox).values(published_at=func.now()))
    assert await monitor.measure() == (0, None)
    assert exposed("lastro_outbox_oldest_pending_age_seconds", outbox=schema) == 0.0


async def test_a_groups_lag_counts_the_records_after_its_committed_offsets(
    settings: Settings,
) -> None:
    group = f"lag-test-{uuid.uuid4().hex[:8]}"
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="latest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    await producer.start()
    try:
        partitions = [TopicPartition(TOPIC, p) for p in consumer.partitions_for_topic(TOPIC) or ()]
        assert partitions
        await consumer.getmany(timeout_ms=500)  # join the group
        ends = await consumer.end_offsets(partitions)
        await consumer.commit(ends)
        monitor = ConsumerLagMonitor(consumer, group, [TOPIC])
        assert await monitor.measure() == {TOPIC: 0}

        committed = exposed("lastro_consumer_committed_offsets", consumer=group, topic=TOPIC)
        assert committed == float(sum(ends.values()))
        for i in range(5):
            await producer.send_and_wait(TOPIC, b"{}", key=f"lag-{i}".encode())
        assert await monitor.measure() == {TOPIC: 5}
        assert exposed("lastro_consumer_lag_records", consumer=group, topic=TOPIC) == 5.0
        await consumer.commit(await consumer.end_offsets(partitions))  # the group catches up
        assert await monitor.measure() == {TOPIC: 0}
        moved = exposed("lastro_consumer_committed_offsets", consumer=group, topic=TOPIC)
        assert moved == committed + 5

        # A group that never committed lags by everything the partitions hold.
        newcomer = AIOKafkaConsumer(
            TOPIC, bootstrap_servers=settings.kafka_bootstrap, group_id=f"{group}-new"
        )
        await newcomer.start()
        try:
            starts = await newcomer.beginning_offsets(partitions)
            ends = await newcomer.end_offsets(partitions)
            held = sum(ends[tp] - starts[tp] for tp in partitions)
            fresh = ConsumerLagMonitor(newcomer, f"{group}-new", [TOPIC])
            assert await fresh.measure() == {TOPIC: held}
        finally:
            await newcomer.stop()

        stop = asyncio.Event()
        stop.set()
        await monitor.run(stop)  # a monitor that stops removes its series
        assert exposed("lastro_consumer_lag_records", consumer=group, topic=TOPIC) is None
        assert exposed("lastro_consumer_committed_offsets", consumer=group, topic=TOPIC) is None
        assert (group, TOPIC) not in {
            tuple(s.labels.values()) for m in CONSUMER_LAG.collect() for s in m.samples
        }
    finally:
        await producer.stop()
        await consumer.stop()


async def test_a_traced_event_has_a_publish_span_and_a_consume_span_in_the_changes_trace(
    settings: Settings,
    engine: AsyncEngine,
    tables: EventTables,
    signer: EventSigner,
    recorded_spans: InMemorySpanExporter,
) -> None:
    recorded_spans.clear()
    run = uuid.uuid4().hex
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("POST /v1/things", kind=SpanKind.SERVER) as request:
        event = new_event("lastro.platform.test_happened", "/tests", {"run": run, "n": 0})
        async with engine.begin() as conn:
            await enqueue(conn, tables.outbox, signer, event, topic=TOPIC, key="trace")
    relay = OutboxRelay(engine, tables.outbox, settings.kafka_bootstrap)
    await relay.start()
    try:
        while await relay.publish_batch():
            pass
    finally:
        await relay.stop()

    consumer = EventConsumer(
        name=f"trace-{run}",
        topics=[TOPIC],
        bootstrap_servers=settings.kafka_bootstrap,
        engine=engine,
        inbox=tables.inbox,
        signer=signer,
        apply=apply_into(tables, run),
    )
    await consumer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    trace_id = request.get_span_context().trace_id

    def ours(name: str) -> list[trace.Span]:
        return [
            s
            for s in recorded_spans.get_finished_spans()
            if s.name == name and s.context is not None and s.context.trace_id == trace_id
        ]

    try:
        for _ in range(300):
            if ours(f"consume {TOPIC}"):
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await task
        await consumer.stop()

    (publish,) = ours(f"publish {TOPIC}")
    (consume,) = ours(f"consume {TOPIC}")
    assert publish.kind is SpanKind.PRODUCER and consume.kind is SpanKind.CONSUMER
    assert publish.parent is not None
    assert publish.parent.span_id == request.get_span_context().span_id
    assert consume.parent is not None and consume.parent.span_id == publish.context.span_id
    assert publish.attributes is not None
    assert publish.attributes["messaging.message.id"] == event.id
    # The envelope keeps the change's traceparent: it is signed and never rewritten.
    async with engine.connect() as conn:
        envelope = await conn.scalar(
            select(tables.outbox.c.envelope).where(tables.outbox.c.event_id == event.id)
        )
    assert json.loads(json.dumps(envelope))["traceparent"] == event.traceparent
