"""Events: CloudEvents 1.0 envelopes, HMAC signatures, outbox, relay and inbox.

The delivery guarantee is *effectively once*:

1. A service writes its state change and the signed event into its outbox
   table in the same transaction (:func:`enqueue`, :func:`enqueue_many`): no
   event without the change, no change without the event.
2. :class:`OutboxRelay` publishes pending rows in id order with aiokafka's
   idempotent producer (``acks=all``) and marks them published. It may publish
   a row again after a crash or a broker outage (at least once), never skip one.
3. :class:`EventConsumer` verifies each event's signature, then applies it and
   records its id in the inbox in one transaction, and only then commits the
   Kafka offset. A redelivered event finds its id in the inbox and has no
   second effect. Unsigned or tampered events are counted, logged and skipped.

:class:`CommandConsumer` is the other shape, for work queues whose handlers are
resumable rather than applied once (a worker moving a payment on through several
external calls): no inbox; commands with the same key are handled in order,
different keys concurrently, and offsets are committed once every command of a
fetched batch was handled, so a crash redelivers them and the handler resumes.

Envelopes are CloudEvents 1.0 structured-mode JSON. The signature extension
``signature`` is ``v<N>:<base64 HMAC-SHA256>`` over the canonical JSON of every
other attribute (sorted keys, no whitespace), keyed by version N of a Transit
HMAC key that services export from the KMS once at start.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, Protocol

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import CommitFailedError, KafkaError
from opentelemetry import propagate, trace
from prometheus_client import Counter, Gauge
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
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lastro.core.background import wait_for_stop
from lastro.core.backoff import full_jitter
from lastro.core.db import in_transaction
from lastro.core.ids import new_id
from lastro.core.observability import context_from_kafka, metrics_registry
from lastro.core.outages import dependency_outage

log = logging.getLogger(__name__)
_TRACER = trace.get_tracer("lastro.events")

# Every topic the platform uses, with its partition count. Keys are the
# aggregate id (account, transaction), so ordering holds per aggregate.
TOPICS: Final[dict[str, int]] = {
    "lastro.platform.test": 3,
    "lastro.ledger": 6,
    "lastro.accounts": 3,
    "lastro.identity": 3,
    "lastro.transactions": 6,
    "lastro.transactions.commands": 6,
    "lastro.fraud": 3,
    "lastro.notifications": 3,
    "lastro.deadletter": 1,
}

SPEC_VERSION: Final = "1.0"
CONTENT_TYPE: Final = "application/cloudevents+json"
SIGNATURE_ATTR: Final = "signature"

EVENTS_PUBLISHED = Counter(
    "lastro_events_published_total", "Events published", ["topic"], registry=metrics_registry()
)
EVENTS_APPLIED = Counter(
    "lastro_events_applied_total", "Events applied", ["consumer"], registry=metrics_registry()
)
EVENTS_DUPLICATE = Counter(
    "lastro_events_duplicate_total",
    "Redelivered events skipped by the inbox",
    ["consumer"],
    registry=metrics_registry(),
)
EVENTS_REJECTED = Counter(
    "lastro_events_rejected_total",
    "Events rejected before applying",
    ["consumer", "reason"],
    registry=metrics_registry(),
)
COMMANDS_FAILED = Counter(
    "lastro_commands_failed_total",
    "Commands whose handler raised (left to the service's own retry)",
    ["consumer"],
    registry=metrics_registry(),
)
CONSUMER_LAG = Gauge(
    "lastro_consumer_lag",
    "Records not yet consumed, per consumer group, topic and partition",
    ["consumer", "topic", "partition"],
    registry=metrics_registry(),
)
RELAY_FAILURES = Counter(
    "lastro_outbox_relay_failures_total", "Relay batches that failed", registry=metrics_registry()
)


class EventRejected(Exception):
    """An event failed envelope or signature checks; ``reason`` is a short label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class CloudEvent:
    """A CloudEvents 1.0 event with JSON data."""

    type: str
    source: str
    data: Mapping[str, Any]
    subject: str | None = None
    id: str = field(default_factory=lambda: new_id("evt"))
    time: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
    )
    traceparent: str | None = None

    def envelope(self) -> dict[str, Any]:
        """The structured-mode attributes, without a signature."""
        env: dict[str, Any] = {
            "specversion": SPEC_VERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": self.time,
            "datacontenttype": "application/json",
            "data": dict(self.data),
        }
        if self.subject is not None:
            env["subject"] = self.subject
        if self.traceparent is not None:
            env["traceparent"] = self.traceparent
        return env

    @classmethod
    def from_envelope(cls, env: Mapping[str, Any]) -> CloudEvent:
        required = ("specversion", "id", "source", "type", "data")
        missing = [name for name in required if name not in env]
        if missing:
            raise EventRejected("malformed", f"missing {', '.join(missing)}")
        if env["specversion"] != SPEC_VERSION or not isinstance(env["data"], dict):
            raise EventRejected("malformed", "not a CloudEvents 1.0 JSON event")
        return cls(
            type=str(env["type"]),
            source=str(env["source"]),
            data=env["data"],
            subject=env.get("subject"),
            id=str(env["id"]),
            time=str(env.get("time", "")),
            traceparent=env.get("traceparent"),
        )


def new_event(
    type: str, source: str, data: Mapping[str, Any], subject: str | None = None
) -> CloudEvent:
    """A new event carrying the current trace context as ``traceparent``."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return CloudEvent(
        type=type,
        source=source,
        data=data,
        subject=subject,
        traceparent=carrier.get("traceparent"),
    )


def canonical(envelope: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: every attribute except the signature, canonical JSON."""
    unsigned = {k: v for k, v in envelope.items() if k != SIGNATURE_ATTR}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class EventSigner:
    """Signs and verifies envelopes with versioned HMAC-SHA256 keys.

    Signing uses the newest key version; verification accepts any version still
    held, so the KMS key can rotate without rejecting events in flight.
    """

    def __init__(self, keys: Mapping[int, bytes]) -> None:
        if not keys:
            raise ValueError("EventSigner needs at least one key version")
        self._keys = dict(keys)
        self._latest = max(self._keys)

    @classmethod
    async def from_transit(cls, transit: TransitKeys, key_name: str) -> EventSigner:
        """Export the HMAC key versions of ``key_name`` from the KMS (created if missing)."""
        await transit.ensure_key(key_name, exportable=True)
        return cls(await transit.export_hmac_keys(key_name))

    def _mac(self, version: int, payload: bytes) -> str:
        digest = hmac.new(self._keys[version], payload, hashlib.sha256).digest()
        return base64.b64encode(digest).decode()

    def sign(self, envelope: Mapping[str, Any]) -> dict[str, Any]:
        signed = dict(envelope)
        signed[SIGNATURE_ATTR] = f"v{self._latest}:{self._mac(self._latest, canonical(envelope))}"
        return signed

    def verify(self, envelope: Mapping[str, Any]) -> CloudEvent:
        """The event if its signature is valid; raises EventRejected otherwise."""
        signature = envelope.get(SIGNATURE_ATTR)
        if not isinstance(signature, str):
            raise EventRejected("unsigned")
        version_text, _, mac = signature.partition(":")
        try:
            version = int(version_text.removeprefix("v"))
        except ValueError:
            raise EventRejected("bad-signature", "unreadable key version") from None
        if version not in self._keys:
            raise EventRejected("bad-signature", f"unknown key version {version}")
        if not hmac.compare_digest(mac, self._mac(version, canonical(envelope))):
            raise EventRejected("bad-signature", "signature does not match")
        return CloudEvent.from_envelope(envelope)


class TransitKeys(Protocol):
    async def ensure_key(self, name: str, exportable: bool = ...) -> None: ...
    async def export_hmac_keys(self, name: str) -> dict[int, bytes]: ...


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


def inbox_table(metadata: MetaData) -> Table:
    """Ids of events a consumer has applied (primary key: consumer + event id)."""
    return Table(
        "inbox",
        metadata,
        Column("consumer", String(100), primary_key=True),
        Column("event_id", String(40), primary_key=True),
        Column("event_type", String(200), nullable=False),
        Column("applied_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
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


@lru_cache(maxsize=16)
def _enqueue_statement(outbox: Table) -> Any:
    """One INSERT of every message (``unnest`` of one array per column) in array
    order; built once per outbox table, its schema rendered by SQLAlchemy."""
    names = [name for name, _ in _ENQUEUED]
    messages = (
        func.unnest(*(cast(bindparam(name), ARRAY(type_)) for name, type_ in _ENQUEUED))
        .table_valued(*names, with_ordinality="n")
        .render_derived(name="m")
    )
    rows = select(*(messages.c[name] for name in names)).order_by(messages.c.n)
    return insert(outbox).from_select(names, rows)


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
    for message in messages:
        if message.topic not in TOPICS:
            raise ValueError(f"unknown topic {message.topic!r}")
    if not messages:
        return
    envelopes = [signer.sign(m.event.envelope()) for m in messages]
    await conn.execute(
        _enqueue_statement(outbox),
        {
            "event_id": [m.event.id for m in messages],
            "topic": [m.topic for m in messages],
            "key": [m.key for m in messages],
            "envelope": [json.dumps(e, ensure_ascii=False) for e in envelopes],
        },
    )


def _record_headers(envelope: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    headers = [("content-type", CONTENT_TYPE.encode())]
    traceparent = envelope.get("traceparent")
    if isinstance(traceparent, str):
        headers.append(("traceparent", traceparent.encode()))
    return headers


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
        idle_interval: float = 0.05,
        max_backoff: float = 5.0,
        request_timeout_ms: int = 10_000,
    ) -> None:
        self._engine = engine
        self._outbox = outbox
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
        """Publish one batch of pending rows; returns how many were published."""
        producer = self._producer
        if producer is None:
            raise RuntimeError("OutboxRelay.start() was not called")
        o = self._outbox

        async def claim_and_publish(conn: AsyncConnection) -> int:
            rows = (
                await conn.execute(
                    select(o.c.id, o.c.topic, o.c.key, o.c.envelope)
                    .where(o.c.published_at.is_(None))
                    .order_by(o.c.id)
                    .limit(self._batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return 0
            futures = [
                await producer.send(
                    row.topic,
                    value=json.dumps(row.envelope, separators=(",", ":")).encode(),
                    key=row.key.encode(),
                    headers=_record_headers(row.envelope),
                )
                for row in rows
            ]
            await asyncio.gather(*futures)
            await conn.execute(
                update(o)
                .where(o.c.id.in_([row.id for row in rows]))
                .values(published_at=func.now())
            )
            for row in rows:
                EVENTS_PUBLISHED.labels(row.topic).inc()
            return len(rows)

        return await in_transaction(self._engine, claim_and_publish)

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set, backing off (full jitter) while Kafka or the
        database is unavailable (a PostgreSQL restart does not end the relay)."""
        failures = 0
        while not stop.is_set():
            try:
                published = await self.publish_batch()
                failures = 0
            except Exception as error:
                if not _relay_can_retry(error):
                    raise
                failures += 1
                RELAY_FAILURES.inc()
                delay = full_jitter(failures, base=0.1, cap=self._max_backoff)
                log.warning("outbox relay: publish failed (%s); retry in %.2fs", error, delay)
                await wait_for_stop(stop, delay)
                continue
            if published < self._batch_size:
                await wait_for_stop(stop, self._idle)


def _relay_can_retry(error: Exception) -> bool:
    return isinstance(error, TimeoutError | KafkaError | OSError) or (
        dependency_outage(error) is not None
    )


Apply = Callable[[AsyncConnection, CloudEvent], Awaitable[None]]


class EventConsumer:
    """Consumes topics in a consumer group and applies each event at most once.

    Offsets are committed only after the event's transaction committed, so a
    crash between the two redelivers the event, and the inbox turns the
    redelivery into a no-op.
    """

    def __init__(
        self,
        *,
        name: str,
        topics: Sequence[str],
        bootstrap_servers: str,
        engine: AsyncEngine,
        inbox: Table,
        signer: EventSigner,
        apply: Apply,
        auto_offset_reset: str = "earliest",
    ) -> None:
        self.name = name
        self._topics = list(topics)
        self._bootstrap = bootstrap_servers
        self._engine = engine
        self._inbox = inbox
        self._signer = signer
        self._apply = apply
        self._offset_reset = auto_offset_reset
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            *self._topics,
            bootstrap_servers=self._bootstrap,
            group_id=self.name,
            enable_auto_commit=False,
            auto_offset_reset=self._offset_reset,
            isolation_level="read_committed",
        )
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        """Verify and apply one record; True if applied now, False if rejected or a duplicate."""
        with _TRACER.start_as_current_span(
            f"consume {record.topic}",
            context=context_from_kafka(record.headers),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": record.topic,
                "messaging.consumer.group.name": self.name,
            },
        ):
            return await self._handle(record)

    async def _handle(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        try:
            envelope = json.loads(record.value or b"")
            if not isinstance(envelope, dict):
                raise EventRejected("malformed", "envelope is not a JSON object")
            event = self._signer.verify(envelope)
        except (ValueError, EventRejected) as error:
            reason = error.reason if isinstance(error, EventRejected) else "malformed"
            EVENTS_REJECTED.labels(self.name, reason).inc()
            log.warning(
                "event rejected",
                extra={
                    "consumer": self.name,
                    "reason": reason,
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                },
            )
            return False

        async def apply_once(conn: AsyncConnection) -> bool:
            claimed = await conn.execute(
                insert(self._inbox)
                .values(consumer=self.name, event_id=event.id, event_type=event.type)
                .on_conflict_do_nothing()
                .returning(self._inbox.c.event_id)
            )
            if claimed.first() is None:
                return False
            await self._apply(conn, event)
            return True

        applied = await in_transaction(self._engine, apply_once)
        (EVENTS_APPLIED if applied else EVENTS_DUPLICATE).labels(self.name).inc()
        return applied

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; commits offsets after each handled batch.

        While a dependency is down (the database restarting, say) the record at hand is
        retried with backoff, in order, instead of ending the consumer; stopping
        meanwhile commits nothing more, so the record is delivered again later."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("EventConsumer.start() was not called")
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=200)
            for records in batches.values():
                for record in records:
                    if not await self._handle_through_outages(record, stop):
                        return
            if batches:
                await consumer.commit()

    async def _handle_through_outages(
        self, record: ConsumerRecord[bytes, bytes], stop: asyncio.Event
    ) -> bool:
        """Handle ``record``, retrying while a dependency is down; False if stopped first."""
        failures = 0
        while True:
            try:
                await self.handle(record)
                return True
            except Exception as error:
                outage = dependency_outage(error)
                if outage is None:
                    raise
                failures += 1
                delay = full_jitter(failures, base=0.1, cap=5.0)
                log.warning(
                    "consumer %s: %s unavailable (%s); retrying offset %d in %.2fs",
                    self.name,
                    outage.extra["dependency"],
                    error,
                    record.offset,
                    delay,
                )
                await wait_for_stop(stop, delay)
                if stop.is_set():
                    return False


Handle = Callable[[CloudEvent], Awaitable[None]]


class CommandConsumer:
    """Hands each verified command to ``handle``: in order per key, concurrently
    across keys (at most ``concurrency`` at once), at least once.

    Offsets are committed after every command of a fetched batch was handled;
    before partitions move to another group member (a rebalance, a graceful stop)
    the commands in flight finish and their offsets are committed, so nothing is
    lost or handed over half done. A crash redelivers what was not committed:
    ``handle`` must be safe to run again (resume from stored state). A handler that
    raises is logged and counted (``lastro_commands_failed_total``) and its offset
    is committed anyway: retrying is the handler's own job (a sweeper), so one bad
    command never blocks its partition. Unsigned or tampered commands are
    rejected like events. ``lastro_consumer_lag`` is updated after every batch.
    """

    def __init__(
        self,
        *,
        name: str,
        topics: Sequence[str],
        bootstrap_servers: str,
        signer: EventSigner,
        handle: Handle,
        concurrency: int = 256,
        max_records: int = 500,
    ) -> None:
        self.name = name
        self._topics = list(topics)
        self._bootstrap = bootstrap_servers
        self._signer = signer
        self._handle = handle
        self._limit = asyncio.Semaphore(concurrency)
        self._max_records = max_records
        self._consumer: AIOKafkaConsumer | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._uncommitted: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self.name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        self._consumer.subscribe(self._topics, listener=_FinishBeforeHandover(self))
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._finish()
            await self._consumer.stop()
            self._consumer = None

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    async def run(self, stop: asyncio.Event) -> None:
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("CommandConsumer.start() was not called")
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=self._max_records)
            if not batches:
                continue
            for tp, records in batches.items():
                self._uncommitted[tp] = records[-1].offset + 1
            self._inflight = asyncio.create_task(self._process(batches))
            await asyncio.shield(self._inflight)
            await self._commit()
            self._measure_lag(batches)

    async def _finish(self) -> None:
        """Let the commands in flight finish, then commit their offsets."""
        if self._inflight is not None and not self._inflight.done():
            await asyncio.shield(self._inflight)
        await self._commit()

    async def _commit(self) -> None:
        offsets, self._uncommitted = self._uncommitted, {}
        if not offsets or self._consumer is None:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as error:
            # The partitions moved on; their next owner redelivers, the handler resumes.
            log.warning("%s: offsets not committed (%s)", self.name, error)

    def _measure_lag(self, batches: Mapping[TopicPartition, Sequence[Any]]) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        for tp in batches:
            highwater = consumer.highwater(tp)
            if highwater is not None:
                lag = max(0, highwater - self._position(tp, batches[tp]))
                CONSUMER_LAG.labels(self.name, tp.topic, str(tp.partition)).set(lag)

    @staticmethod
    def _position(tp: TopicPartition, records: Sequence[Any]) -> int:
        return int(records[-1].offset) + 1

    async def _process(self, batches: Mapping[TopicPartition, Sequence[Any]]) -> None:
        chains: dict[tuple[str, bytes | None], list[Any]] = {}
        for tp, records in batches.items():
            for record in records:
                chains.setdefault((tp.topic, record.key), []).append(record)

        async def in_order(records: list[Any]) -> None:
            for record in records:
                async with self._limit:
                    await self._one(record)

        await asyncio.gather(*(in_order(records) for records in chains.values()))

    async def _one(self, record: ConsumerRecord[bytes, bytes]) -> None:
        with _TRACER.start_as_current_span(
            f"consume {record.topic}",
            context=context_from_kafka(record.headers),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": record.topic,
                "messaging.consumer.group.name": self.name,
            },
        ):
            try:
                envelope = json.loads(record.value or b"")
                if not isinstance(envelope, dict):
                    raise EventRejected("malformed", "envelope is not a JSON object")
                command = self._signer.verify(envelope)
            except (ValueError, EventRejected) as error:
                reason = error.reason if isinstance(error, EventRejected) else "malformed"
                EVENTS_REJECTED.labels(self.name, reason).inc()
                log.warning("command rejected", extra={"consumer": self.name, "reason": reason})
                return
            try:
                await self._handle(command)
            except Exception:
                COMMANDS_FAILED.labels(self.name).inc()
                log.exception("%s: handling %s failed", self.name, command.id)
                return
            EVENTS_APPLIED.labels(self.name).inc()


class _FinishBeforeHandover(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: CommandConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._consumer._finish()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("%s: assigned %s", self._consumer.name, sorted(str(tp) for tp in assigned))
