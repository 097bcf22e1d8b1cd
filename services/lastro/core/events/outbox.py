"""The transactional outbox and its relay to Kafka.

A service writes its state change and the signed event into its outbox table in
the same transaction (:func:`enqueue`, :func:`enqueue_many`): no event without the
change, no change without the event. :class:`OutboxRelay` publishes pending rows
in id order with aiokafka's idempotent producer (``acks=all``) and marks them
published. It may publish a row again after a crash or a broker outage (at least
once), never skip one.

An idle relay does not poll its table many times a second: a transaction that
enqueued and committed in the same process wakes the relays of that outbox at once
(:func:`lastro.core.db.after_commit`); rows another process wrote are found by a
slower fallback poll (``idle_interval``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from opentelemetry import propagate, trace
from opentelemetry.trace import Span
from prometheus_client import Counter
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    cast,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, Insert, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lastro.core.background import report_failure, wait_for_stop, wait_for_wake
from lastro.core.backoff import full_jitter
from lastro.core.db import after_commit, driver_table_name, in_driver_transaction
from lastro.core.events.envelope import CONTENT_TYPE, TOPICS, CloudEvent, EventSigner
from lastro.core.lag import OutboxMonitor
from lastro.core.observability import kafka_headers, metrics_registry
from lastro.core.outages import dependency_outage

log = logging.getLogger(__name__)

EVENTS_PUBLISHED = Counter(
    "lastro_events_published_total", "Events published", ["topic"], registry=metrics_registry()
)
RELAY_FAILURES = Counter(
    "lastro_outbox_relay_failures_total", "Relay batches that failed", registry=metrics_registry()
)


DEFECT_BACKOFF_SECONDS: Final = 30.0
"""The longest wait between a relay's retries after an error that is not an outage."""


def outbox_table(metadata: MetaData) -> Table:
    """The transactional outbox: signed envelopes waiting to be published."""
    return Table(
        "outbox",
        metadata,
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("event_id", String(40), nullable=False, unique=True),
        Column("topic", String(200), nullable=False),
        Column("key", String(200), nullable=False),
        Column("envelope", JSONB, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("published_at", DateTime(timezone=True)),
        Index("outbox_pending_idx", "id", postgresql_where=text("published_at IS NULL")),
    )


@dataclass(frozen=True)
class OutboxMessage:
    """An event bound for ``topic``, partitioned by ``key`` (the aggregate id)."""

    event: CloudEvent
    topic: str
    key: str


# Arrays of text, not of the columns' varchar(n): an explicit cast would truncate an
# over-long value that the insert must refuse.
_ENQUEUED: Final = (
    ("event_id", Text()),
    ("topic", Text()),
    ("key", Text()),
    ("envelope", JSONB()),
)


# The wake-up of every running relay, by the outbox table it publishes.
_RELAYS_WAITING: Final[dict[str, set[asyncio.Event]]] = {}


def _wake_relays(outbox: Table) -> None:
    for wake in _RELAYS_WAITING.get(outbox.fullname, ()):
        wake.set()


@lru_cache(maxsize=16)
def enqueue_statement(outbox: Table) -> Insert:
    """One INSERT of every message (``unnest`` of one array per column) in array
    order, its parameters from :func:`enqueue_parameters`; built once per outbox table,
    its schema rendered by SQLAlchemy. A statement that writes more than the outbox
    carries it as a CTE (the audit chain's append: one round trip for both)."""
    names = [name for name, _ in _ENQUEUED]
    messages = (
        func.unnest(*(cast(bindparam(name), ARRAY(type_)) for name, type_ in _ENQUEUED))
        .table_valued(*names, with_ordinality="n")
        .render_derived(name="m")
    )
    rows = select(*(messages.c[name] for name in names)).order_by(messages.c.n)
    return insert(outbox).from_select(names, rows)


def enqueue_parameters(
    conn: AsyncConnection, outbox: Table, signer: EventSigner, messages: Sequence[OutboxMessage]
) -> dict[str, list[str]]:
    """The parameters of :func:`enqueue_statement` writing every message, signed; the
    statement must run in ``conn``'s transaction, whose commit wakes the outbox's
    relays. Raises ValueError for a topic that is not in the catalogue."""
    for message in messages:
        if message.topic not in TOPICS:
            raise ValueError(f"unknown topic {message.topic!r}")
    envelopes = [signer.sign(m.event.envelope()) for m in messages]
    after_commit(conn, f"wake-relays:{outbox.fullname}", lambda: _wake_relays(outbox))
    return {
        "event_id": [m.event.id for m in messages],
        "topic": [m.topic for m in messages],
        "key": [m.key for m in messages],
        "envelope": [json.dumps(e, ensure_ascii=False) for e in envelopes],
    }


async def enqueue(
    conn: AsyncConnection,
    outbox: Table,
    signer: EventSigner,
    event: CloudEvent,
    *,
    topic: str,
    key: str,
) -> None:
    """Write the signed event into the outbox inside the caller's transaction."""
    await enqueue_many(conn, outbox, signer, [OutboxMessage(event, topic, key)])


async def enqueue_many(
    conn: AsyncConnection, outbox: Table, signer: EventSigner, messages: Sequence[OutboxMessage]
) -> None:
    """Write every message, signed, into the outbox inside the caller's transaction,
    in one statement; rows get ascending ids in ``messages`` order, so the relay
    publishes them in that order."""
    if messages:
        await conn.execute(
            enqueue_statement(outbox), enqueue_parameters(conn, outbox, signer, messages)
        )


_TRACER = trace.get_tracer("lastro.events")


def _publish_span(topic: str, event_id: str, traceparent: str | None) -> Span | None:
    """A PRODUCER span for publishing a traced event, child of its ``traceparent``
    (the change that wrote it); None for an event recorded outside any trace."""
    if traceparent is None:
        return None
    return _TRACER.start_span(
        f"publish {topic}",
        context=propagate.extract({"traceparent": traceparent}),
        kind=trace.SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.destination.name": topic,
            "messaging.message.id": event_id,
        },
    )


def _record_headers(traceparent: str | None, span: Span | None) -> list[tuple[str, bytes]]:
    """The content type and, for a traced event, the publish span's trace context
    (else the envelope's own ``traceparent``)."""
    headers = [("content-type", CONTENT_TYPE.encode())]
    if span is not None:
        headers += kafka_headers(trace.set_span_in_context(span))
    elif traceparent is not None:
        headers.append(("traceparent", traceparent.encode()))
    return headers


def _claim_statement(engine: AsyncEngine, outbox: Table) -> str:
    """The relay's one statement as the driver's SQL, for one outbox (named by
    :func:`~lastro.core.db.driver_table_name`: a schema-less table in the schema the
    engine maps it to).

    It takes the oldest pending rows, locked (skipping rows another relay holds),
    marks them published and returns each with its envelope as PostgreSQL's JSON
    text: the record's value as stored, without a decode and a re-encode in Python (a
    consumer parses it and checks the signature over the parsed event, so the spacing
    is free). Claim and mark are one statement, so one round trip fewer per wake-up:
    the mark only becomes visible if the relay commits, which it does after Kafka
    acknowledged every record; on any failure it rolls back and the rows are pending
    again. ``RETURNING`` keeps no order, so the rows are sorted by id after it."""
    name = driver_table_name(engine, outbox)
    return (
        f"WITH claimed AS (UPDATE {name} AS o SET published_at = now() FROM ("  # noqa: S608
        f" SELECT id FROM {name} WHERE published_at IS NULL"
        " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) AS pending"
        " WHERE o.id = pending.id"
        " RETURNING o.id, o.event_id, o.topic, o.key, o.envelope::text AS body,"
        " o.envelope->>'traceparent' AS traceparent)"
        " SELECT * FROM claimed ORDER BY id"
    )


class OutboxRelay:
    """Publishes pending outbox rows to Kafka, in id order, at least once.

    Several relays may run against one outbox: each batch is claimed with
    ``FOR UPDATE SKIP LOCKED``. A batch is marked published only after Kafka
    acknowledged every record (``acks=all``); on any failure the transaction
    rolls back, the rows stay pending and the relay backs off and retries.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        outbox: Table,
        bootstrap_servers: str,
        *,
        batch_size: int = 500,
        idle_interval: float = 0.5,
        max_backoff: float = 5.0,
        request_timeout_ms: int = 10_000,
    ) -> None:
        self._engine = engine
        self._outbox = outbox
        self._claim = _claim_statement(engine, outbox)
        self._bootstrap = bootstrap_servers
        self._batch_size = batch_size
        self._idle = idle_interval
        self._max_backoff = max_backoff
        self._request_timeout_ms = request_timeout_ms
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            request_timeout_ms=self._request_timeout_ms,
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def publish_batch(self) -> int:
        """Publish one batch of pending rows; returns how many were published.

        Its transaction runs on the driver (:func:`~lastro.core.db.in_driver_transaction`):
        at one or two events per wake-up SQLAlchemy's work on its statements cost more
        than the statements. Three round trips: BEGIN, the claim, COMMIT."""
        producer = self._producer
        if producer is None:
            raise RuntimeError("OutboxRelay.start() was not called")

        async def claim_and_publish(conn: asyncpg.Connection) -> int:
            rows = await conn.fetch(self._claim, self._batch_size)
            if not rows:
                return 0
            spans = [
                _publish_span(row["topic"], row["event_id"], row["traceparent"]) for row in rows
            ]
            try:
                futures = [
                    await producer.send(
                        row["topic"],
                        value=row["body"].encode(),
                        key=row["key"].encode(),
                        headers=_record_headers(row["traceparent"], span),
                    )
                    for row, span in zip(rows, spans, strict=True)
                ]
                await asyncio.gather(*futures)
            except Exception as error:
                for span in spans:
                    if span is not None:
                        span.record_exception(error)
                        span.set_status(trace.Status(trace.StatusCode.ERROR))
                raise
            finally:
                for span in spans:
                    if span is not None:
                        span.end()
            for row in rows:
                EVENTS_PUBLISHED.labels(row["topic"]).inc()
            return len(rows)

        return await in_driver_transaction(self._engine, claim_and_publish)

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set, backing off (full jitter) while Kafka or the
        database is unavailable (a PostgreSQL restart does not end the relay) and, more
        slowly, after any other error. The outbox's backlog is measured meanwhile
        (``core/lag.py``)."""
        monitor = OutboxMonitor(self._engine, self._outbox)
        measuring = asyncio.create_task(monitor.run(stop), name=f"outbox-monitor-{monitor.name}")
        try:
            await self._publish_until(stop)
        finally:
            measuring.cancel()
            await asyncio.gather(measuring, return_exceptions=True)

    async def _publish_until(self, stop: asyncio.Event) -> None:
        wake = asyncio.Event()
        waiting = _RELAYS_WAITING.setdefault(self._outbox.fullname, set())
        waiting.add(wake)
        try:
            await self._publish_while_woken(stop, wake)
        finally:
            waiting.discard(wake)

    async def _publish_while_woken(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            wake.clear()  # a commit while this batch is claimed wakes the next one
            try:
                published = await self.publish_batch()
                failures = 0
            except Exception as error:
                # Never ends while the service runs: an outage is waited out, and a
                # defect (an error that is not an outage) is logged with its traceback,
                # counted and retried, slower, so its service does not run on with its
                # events silently held back.
                failures += 1
                RELAY_FAILURES.inc()
                cap = self._max_backoff if _is_outage(error) else DEFECT_BACKOFF_SECONDS
                delay = full_jitter(failures, base=0.1, cap=cap)
                report_failure(
                    f"outbox relay {self._outbox.fullname}", error, f"retry in {delay:.2f}s"
                )
                await wait_for_stop(stop, delay)
                continue
            if published < self._batch_size:
                await wait_for_wake(stop, wake, self._idle)


def _is_outage(error: Exception) -> bool:
    return isinstance(error, TimeoutError | KafkaError | OSError) or (
        dependency_outage(error) is not None
    )
